"""LXMERT pretraining data and task (in progress: the masking rules are here so far)."""

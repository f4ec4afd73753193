"""lxmert-pipeline: the stages of the LXMERT method and the data they exchange."""

__version__ = "0.1.0"

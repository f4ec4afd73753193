"""State dicts renamed to the key layouts airsplay/lxmert saved, to test that they import."""


def to_original_pretraining(state):
    """The key names of airsplay/lxmert's LXRTPretraining saved from nn.DataParallel."""
    return {"module." + ("bert." + k[len("lxmert."):] if k.startswith("lxmert.") else k): v.clone()
            for k, v in state.items()}


def to_original_finetuned(state, head):
    """airsplay/lxmert's VQA/GQA/NLVR2 models: lxrt_encoder.model.bert.* + logit_fc.*"""
    out = {}
    for k, v in state.items():
        if k.startswith("lxmert."):
            out["lxrt_encoder.model.bert." + k[len("lxmert."):]] = v.clone()
        elif k.startswith(head):
            out["logit_fc." + k[len(head):]] = v.clone()
    return out

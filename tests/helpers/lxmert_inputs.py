"""Random LXMERT inputs and pretraining labels with padded text, padded regions and a
labelled position for every pretraining task, for comparing models number for number."""

import torch


def make_inputs(config, batch=3, seq=9, boxes=7, seed=0, visual_mask=False):
    """Keyword inputs of LXMERT's forward: rows 1 and 2 have padded text; with `visual_mask`,
    rows 0 and 2 have padded regions."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, config.vocab_size, (batch, seq), generator=g)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    attention_mask[1, 5:] = 0          # padded text
    attention_mask[2, 3:] = 0
    input_ids[attention_mask == 0] = 0
    token_type_ids = torch.zeros(batch, seq, dtype=torch.long)
    token_type_ids[0, 4:] = 1
    inputs = dict(
        input_ids=input_ids,
        visual_feats=torch.randn(batch, boxes, config.visual_feat_dim, generator=g),
        visual_pos=torch.rand(batch, boxes, config.visual_pos_dim, generator=g),
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
    )
    if visual_mask:
        vmask = torch.ones(batch, boxes, dtype=torch.long)
        vmask[0, 4:] = 0
        vmask[2, 2:] = 0
        inputs["visual_attention_mask"] = vmask
    return inputs


def make_labels(config, batch=3, seq=9, boxes=7, seed=1):
    """Pretraining labels for `make_inputs`: 4 masked words, about 30% masked regions (at least
    one), matched/unmatched pairs and 2 of 3 rows with an answer."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.full((batch, seq), -100)
    labels[0, 1] = 5
    labels[0, 3] = 7
    labels[1, 2] = 11
    labels[2, 1] = 3
    feat_mask = (torch.rand(batch, boxes, generator=g) < 0.3).float()
    feat_mask[0, 0] = 1.0
    obj_labels = {
        "obj": (torch.randint(0, config.num_object_labels, (batch, boxes), generator=g),
                torch.rand(batch, boxes, generator=g)),
        "attr": (torch.randint(0, config.num_attr_labels, (batch, boxes), generator=g),
                 torch.rand(batch, boxes, generator=g)),
        "feat": (torch.randn(batch, boxes, config.visual_feat_dim, generator=g), feat_mask),
    }
    return dict(labels=labels, obj_labels=obj_labels, matched_label=torch.tensor([1, 0, 1]),
                ans=torch.tensor([2, -100, 4]))

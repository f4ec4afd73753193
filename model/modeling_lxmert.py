"""LXMERT (Tan & Bansal 2019) as plain `torch.nn.Module`s, weight-compatible with transformers.

Module and parameter names are transformers' (`models/lxmert/modeling_lxmert.py`), which are
the original airsplay/lxmert names with `bert.` -> `lxmert.`; a state dict moves between the
three without renames beyond that prefix. The math is the same; the work is not:

- attention goes through `scaled_dot_product_attention`; the explicit probabilities are
  computed only when asked for (`output_attentions=True`), for every layer and both
  cross-attention directions;
- Q/K/V are one matmul per stream, and the cross-attention module (shared by both
  directions, reading the layer's inputs) projects each stream once instead of twice;
- the MLM decoder (30522-way) runs only on labelled positions and the QA head only on rows
  with a QA label (same loss; see `LxmertConfig.gather_labelled_rows`);
- losses are returned per task as tensors: nothing in `forward` calls `.item()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from model.configuration_lxmert import LxmertConfig

IGNORE_INDEX = -100
TASKS = ("mlm", "matched", "obj", "attr", "feat", "qa")
# where attention runs through scaled_dot_product_attention (elsewhere: two matmuls and a softmax)
SDPA_DEVICES = {"cuda", "xpu", "mps"}


# ---------------------------------------------------------------------------------------------
# outputs


@dataclass
class LxmertModelOutput:
    language_output: torch.Tensor
    vision_output: torch.Tensor
    pooled_output: torch.Tensor
    language_hidden_states: tuple[torch.Tensor, ...] | None = None
    vision_hidden_states: tuple[torch.Tensor, ...] | None = None
    language_attentions: tuple[torch.Tensor, ...] | None = None
    vision_attentions: tuple[torch.Tensor, ...] | None = None
    # language queries over objects (what transformers returns) ...
    cross_encoder_attentions: tuple[torch.Tensor, ...] | None = None
    # ... and objects over words (transformers computes it but never returns it)
    cross_encoder_attentions_vision: tuple[torch.Tensor, ...] | None = None


@dataclass
class LxmertForPreTrainingOutput:
    """`loss` is the weighted sum of `loss_per_task` (keys `TASKS`; a task without labels is 0;
    plus "words" when `sentence_words` was given).

    With `labels` given, the MLM logits exist only for the rows in `masked_lm_logits`, paired
    with `masked_lm_labels` (rows labelled -100, if any, are to be ignored); without labels,
    `prediction_logits` holds the full (B, T, V) scores. The same holds for the QA head:
    `qa_logits`/`qa_labels` with `ans`, `question_answering_score` (B, A) without.
    """

    loss: torch.Tensor | None = None
    loss_per_task: dict[str, torch.Tensor] | None = None
    prediction_logits: torch.Tensor | None = None
    masked_lm_logits: torch.Tensor | None = None
    masked_lm_labels: torch.Tensor | None = None
    cross_relationship_score: torch.Tensor | None = None
    question_answering_score: torch.Tensor | None = None
    qa_logits: torch.Tensor | None = None
    qa_labels: torch.Tensor | None = None
    visual_prediction_scores: dict[str, torch.Tensor] | None = None
    language_output: torch.Tensor | None = None
    vision_output: torch.Tensor | None = None
    pooled_output: torch.Tensor | None = None
    language_hidden_states: tuple[torch.Tensor, ...] | None = None
    vision_hidden_states: tuple[torch.Tensor, ...] | None = None
    language_attentions: tuple[torch.Tensor, ...] | None = None
    vision_attentions: tuple[torch.Tensor, ...] | None = None
    cross_encoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_encoder_attentions_vision: tuple[torch.Tensor, ...] | None = None


@dataclass
class LxmertForQuestionAnsweringOutput:
    loss: torch.Tensor | None = None
    question_answering_score: torch.Tensor | None = None
    pooled_output: torch.Tensor | None = None
    encoder_output: LxmertModelOutput | None = field(default=None, repr=False)


@dataclass
class LxmertForNLVR2Output:
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    pooled_output: torch.Tensor | None = None  # (B, 2*hidden): [pooled(img0); pooled(img1)]


# ---------------------------------------------------------------------------------------------
# building blocks


def _additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, T) 1/0 mask -> (B, 1, 1, T) additive mask in `dtype`, transformers' finfo.min rule.

    The reference adds -10000; both vanish identically after softmax unless a whole row is
    masked, so transformers' constant is used for exact parity with it.
    """
    if mask is None:
        return None
    mask = mask[:, None, None, :].to(dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


def _compute_dtype(reference: torch.Tensor) -> torch.dtype:
    device_type = reference.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return reference.dtype


class GeLU(nn.Module):
    """Exact erf GELU, a module so that `logit_fc.{0,2,3}` keep the reference's indices."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


class LxmertEmbeddings(nn.Module):
    def __init__(self, config: LxmertConfig):
        super().__init__()
        # padding_idx=0 on all three, as the reference and transformers (quirk Q1: the rows
        # of position 0 and token type 0 get no gradient)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size,
                                                padding_idx=0)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size, padding_idx=0)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        # lookups, not weight slices: padding_idx must keep the gradient off row 0
        seq_length = input_ids.shape[1]
        positions = self.position_embeddings(torch.arange(seq_length, device=input_ids.device))
        words = self.word_embeddings(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros(1, dtype=torch.long, device=input_ids.device)
        types = self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(words + positions + types))


class LxmertAttention(nn.Module):
    """Q/K/V projections; `attend` runs SDPA or the explicit math."""

    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.head_dim
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self._fused_cache: tuple | None = None

    def train(self, mode: bool = True):
        self._fused_cache = None
        return super().train(mode)

    def fused_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (3h, h) Q/K/V weight and its bias in the compute dtype (autocast's, if on).

        One (3h, h) GEMM beats three (h, h) ones at LXMERT's short sequences; the parameters
        stay separate so that state-dict names are transformers'. Each part is cast before the
        concatenation, so under autocast the copy is made once, in the low precision. Without
        autograd (inference in eval mode) the result is kept until a weight changes (its
        version counter or storage) or the mode changes, so an inference pass neither copies
        nor casts these weights.
        """
        parts = (self.query.weight, self.key.weight, self.value.weight,
                 self.query.bias, self.key.bias, self.value.bias)
        dtype = _compute_dtype(self.query.weight)
        if self.training or torch.is_grad_enabled():
            return _fuse_qkv(parts, dtype)
        key = (dtype, tuple((p.data_ptr(), p._version) for p in parts))
        if self._fused_cache is None or self._fused_cache[0] != key:
            self._fused_cache = (key, _fuse_qkv(parts, dtype))
        return self._fused_cache[1]

    def project(self, x: torch.Tensor, weight_bias: tuple[torch.Tensor, torch.Tensor] | None = None):
        """x (B, T, h) -> q, k, v each (B, heads, T, head_dim) (views, no copies)."""
        weight, bias = weight_bias if weight_bias is not None else self.fused_weight()
        b, t, _ = x.shape
        qkv = F.linear(x, weight, bias).view(b, t, 3, self.num_attention_heads, self.attention_head_size)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def attend(self, q, k, v, mask: torch.Tensor | None, need_probs: bool = False):
        """-> context (B, T, h), probabilities (B, heads, T, S) or None.

        SDPA on accelerators; the explicit math on the CPU, where SDPA's flash kernel is
        1.5-3x slower than two batched matmuls at LXMERT's 20-36 positions (bench/bench_model.py
        times both paths), and whenever the probabilities are wanted.
        """
        b, _, t, _ = q.shape
        if need_probs or q.device.type not in SDPA_DEVICES:
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
            if mask is not None:
                scores = scores + mask
            probs = torch.softmax(scores, dim=-1)
            context = torch.matmul(self.dropout(probs), v)
        else:
            context = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout.p if self.training else 0.0)
        return context.transpose(1, 2).reshape(b, t, -1), probs if need_probs else None


def _fuse_qkv(parts: tuple[torch.Tensor, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    weights, biases = parts[:3], parts[3:]
    return torch.cat([w.to(dtype) for w in weights]), torch.cat([b.to(dtype) for b in biases])


class LxmertAttentionOutput(nn.Module):
    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class LxmertSelfAttentionLayer(nn.Module):
    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.self = LxmertAttention(config)
        self.output = LxmertAttentionOutput(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, need_probs: bool = False):
        q, k, v = self.self.project(x)
        context, probs = self.self.attend(q, k, v, mask, need_probs)
        return self.output(context, x), probs


class LxmertCrossAttentionLayer(nn.Module):
    """One module for both directions (the reference shares Q/K/V and output weights)."""

    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.att = LxmertAttention(config)
        self.output = LxmertAttentionOutput(config)

    def forward(self, lang, lang_mask, visn, visn_mask, need_probs: bool = False):
        # both directions read the layer inputs, so each stream is projected once and its
        # K/V serve the other stream's queries
        weight_bias = self.att.fused_weight()
        q_l, k_l, v_l = self.att.project(lang, weight_bias)
        q_v, k_v, v_v = self.att.project(visn, weight_bias)
        lang_ctx, lang_probs = self.att.attend(q_l, k_v, v_v, visn_mask, need_probs)
        visn_ctx, visn_probs = self.att.attend(q_v, k_l, v_l, lang_mask, need_probs)
        return self.output(lang_ctx, lang), self.output(visn_ctx, visn), lang_probs, visn_probs


class LxmertIntermediate(nn.Module):
    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class LxmertOutput(nn.Module):
    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class LxmertLayer(nn.Module):
    """BERT layer: self-attention, Add&LN, FFN, Add&LN (language and relation encoders)."""

    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.attention = LxmertSelfAttentionLayer(config)
        self.intermediate = LxmertIntermediate(config)
        self.output = LxmertOutput(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, need_probs: bool = False):
        attended, probs = self.attention(x, mask, need_probs)
        return self.output(self.intermediate(attended), attended), probs


class LxmertXLayer(nn.Module):
    """Cross layer: shared cross-attention (both directions on the inputs), self-attention, FFN."""

    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.visual_attention = LxmertCrossAttentionLayer(config)
        self.lang_self_att = LxmertSelfAttentionLayer(config)
        self.visn_self_att = LxmertSelfAttentionLayer(config)
        self.lang_inter = LxmertIntermediate(config)
        self.lang_output = LxmertOutput(config)
        self.visn_inter = LxmertIntermediate(config)
        self.visn_output = LxmertOutput(config)

    def forward(self, lang, lang_mask, visn, visn_mask, need_probs: bool = False):
        lang, visn, lang_probs, visn_probs = self.visual_attention(lang, lang_mask, visn, visn_mask, need_probs)
        lang, _ = self.lang_self_att(lang, lang_mask)
        visn, _ = self.visn_self_att(visn, visn_mask)
        lang = self.lang_output(self.lang_inter(lang), lang)
        visn = self.visn_output(self.visn_inter(visn), visn)
        return lang, visn, lang_probs, visn_probs


class LxmertVisualFeatureEncoder(nn.Module):
    """(LN(fc(feat)) + LN(fc(box))) / 2."""

    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.visn_fc = nn.Linear(config.visual_feat_dim, config.hidden_size)
        self.visn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.box_fc = nn.Linear(config.visual_pos_dim, config.hidden_size)
        self.box_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, visual_feats: torch.Tensor, visual_pos: torch.Tensor) -> torch.Tensor:
        # the store's float16 features may arrive as they are: converted once, on the device,
        # straight to the compute dtype (bf16 under autocast, else the weights' dtype)
        visual_feats = visual_feats.to(_compute_dtype(self.visn_fc.weight))
        x = self.visn_layer_norm(self.visn_fc(visual_feats))
        y = self.box_layer_norm(self.box_fc(visual_pos))
        return self.dropout((x + y) / 2)


class LxmertEncoder(nn.Module):
    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.visn_fc = LxmertVisualFeatureEncoder(config)
        self.layer = nn.ModuleList([LxmertLayer(config) for _ in range(config.l_layers)])
        self.x_layers = nn.ModuleList([LxmertXLayer(config) for _ in range(config.x_layers)])
        self.r_layers = nn.ModuleList([LxmertLayer(config) for _ in range(config.r_layers)])

    def forward(self, lang, lang_mask, visual_feats, visual_pos, visn_mask,
                output_attentions: bool = False, output_hidden_states: bool = False) -> LxmertModelOutput:
        visn = self.visn_fc(visual_feats, visual_pos)
        lang_states, visn_states = [], []
        lang_att, visn_att, cross_att, cross_att_v = [], [], [], []
        for layer in self.layer:
            lang, probs = layer(lang, lang_mask, output_attentions)
            lang_states.append(lang)
            lang_att.append(probs)
        for layer in self.r_layers:
            visn, probs = layer(visn, visn_mask, output_attentions)
            visn_states.append(visn)
            visn_att.append(probs)
        for layer in self.x_layers:
            lang, visn, lang_probs, visn_probs = layer(lang, lang_mask, visn, visn_mask, output_attentions)
            lang_states.append(lang)
            visn_states.append(visn)
            cross_att.append(lang_probs)
            cross_att_v.append(visn_probs)
        return LxmertModelOutput(
            language_output=lang, vision_output=visn, pooled_output=None,
            language_hidden_states=tuple(lang_states) if output_hidden_states else None,
            vision_hidden_states=tuple(visn_states) if output_hidden_states else None,
            language_attentions=tuple(lang_att) if output_attentions else None,
            vision_attentions=tuple(visn_att) if output_attentions else None,
            cross_encoder_attentions=tuple(cross_att) if output_attentions else None,
            cross_encoder_attentions_vision=tuple(cross_att_v) if output_attentions else None,
        )


class LxmertPooler(nn.Module):
    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden_states[:, 0]))


class LxmertPredictionHeadTransform(nn.Module):
    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class LxmertLMPredictionHead(nn.Module):
    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.transform = LxmertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)  # tied
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(x), self.decoder.weight, self.bias)


class LxmertPreTrainingHeads(nn.Module):
    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.predictions = LxmertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


class LxmertVisualAnswerHead(nn.Module):
    """hidden -> 2*hidden -> GeLU -> LN -> answers (`logit_fc.{0,2,3}` as the reference)."""

    def __init__(self, config: LxmertConfig, num_labels: int, in_dim: int | None = None):
        super().__init__()
        in_dim = in_dim or config.hidden_size
        self.logit_fc = _answer_mlp(in_dim, config.hidden_size * 2, num_labels, config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit_fc(x)


def _answer_mlp(in_dim: int, hidden: int, out_dim: int, eps: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), GeLU(), nn.LayerNorm(hidden, eps=eps),
                         nn.Linear(hidden, out_dim))


class LxmertVisualObjHead(nn.Module):
    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.transform = LxmertPredictionHeadTransform(config)
        sizes = {}
        if config.visual_obj_loss:
            sizes["obj"] = config.num_object_labels
        if config.visual_attr_loss:
            sizes["attr"] = config.num_attr_labels
        if config.visual_feat_loss:
            sizes["feat"] = config.visual_feat_dim
        self.decoder_dict = nn.ModuleDict({k: nn.Linear(config.hidden_size, n) for k, n in sizes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.transform(x)
        return {key: decoder(x) for key, decoder in self.decoder_dict.items()}


# ---------------------------------------------------------------------------------------------
# models


class LxmertPreTrainedModel(nn.Module):
    """Shared init (the reference's `init_bert_weights`) and config handling."""

    base_model_prefix = "lxmert"
    architecture = "LxmertModel"

    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.config = config

    @torch.no_grad()
    def init_weights(self) -> None:
        """normal(0, initializer_range) for Linear/Embedding weights (padding rows included,
        as the reference's from-scratch init), zero biases, LayerNorm 1/0."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, LxmertLMPredictionHead):
                module.bias.zero_()
        self.tie_weights()

    def tie_weights(self) -> None:
        pass

    @torch.no_grad()
    def cast_linear_weights(self, dtype: torch.dtype) -> "LxmertPreTrainedModel":
        """Hold every Linear's weight and bias in `dtype`, for inference under autocast of the
        same dtype; LayerNorms and embeddings keep their precision (and a Linear tied to an
        embedding, the MLM decoder, stays with it).

        Autocast casts each fp32 weight to the low precision on every forward: at QA inference
        on a CPU that copying is a fifth of the time. Weights cast once remove it; the numbers
        are those of autocast (the same cast, made once). Returns self, in eval mode: the
        weights are no longer the fp32 ones an optimiser would update.
        """
        embedding_weights = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        for module in self.modules():
            if isinstance(module, nn.Linear) and id(module.weight) not in embedding_weights:
                module.to(dtype)
        return self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


class LxmertModel(LxmertPreTrainedModel):
    architecture = "LxmertModel"

    def __init__(self, config: LxmertConfig, init_weights: bool = True):
        super().__init__(config)
        self.embeddings = LxmertEmbeddings(config)
        self.encoder = LxmertEncoder(config)
        self.pooler = LxmertPooler(config)
        if init_weights:  # a model with heads initialises everything once itself
            self.init_weights()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(self, input_ids: torch.Tensor, visual_feats: torch.Tensor, visual_pos: torch.Tensor,
                attention_mask: torch.Tensor | None = None,
                visual_attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                output_attentions: bool = False, output_hidden_states: bool = False) -> LxmertModelOutput:
        if visual_feats is None or visual_pos is None:
            raise ValueError("LXMERT needs both visual_feats (B, N, D) and visual_pos (B, N, 4)")
        embedded = self.embeddings(input_ids, token_type_ids)
        dtype = _compute_dtype(embedded)
        out = self.encoder(embedded, _additive_mask(attention_mask, dtype), visual_feats, visual_pos,
                           _additive_mask(visual_attention_mask, dtype),
                           output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        out.pooled_output = self.pooler(out.language_output)
        return out


def _labelled_rows(labels: torch.Tensor, gather: bool) -> torch.Tensor | None:
    """Indices of the rows whose label is not IGNORE_INDEX, or None for all rows."""
    if not gather:
        return None
    return (labels != IGNORE_INDEX).nonzero().squeeze(1)


def _mean_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE averaged over labelled rows, 0 (not NaN) when there are none; no host sync."""
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def sentence_words_loss(cls_logits: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the [CLS] word scores (B, V) against each row's bag of words: `words`
    (B, T) holds token ids, IGNORE_INDEX where not a target; a row's loss is the mean over its
    targets (a soft target spread over its words), the total the mean over rows with any."""
    targets = words != IGNORE_INDEX
    log_probs = F.log_softmax(cls_logits.float(), -1).gather(1, words.clamp(min=0))
    per_row = (log_probs * targets).sum(1) / targets.sum(1).clamp(min=1)
    has = targets.any(1)
    return -(per_row * has).sum() / has.sum().clamp(min=1)


class LxmertForPreTraining(LxmertPreTrainedModel):
    """Backbone + MLM, matching, visual obj/attr/feat and QA heads; the five-task loss."""

    architecture = "LxmertForPreTraining"
    tied_weights = {"cls.predictions.decoder.weight": "lxmert.embeddings.word_embeddings.weight"}

    def __init__(self, config: LxmertConfig):
        super().__init__(config)
        self.lxmert = LxmertModel(config, init_weights=False)
        self.cls = LxmertPreTrainingHeads(config)
        if config.task_obj_predict:
            self.obj_predict_head = LxmertVisualObjHead(config)
        if config.task_qa:
            self.answer_head = LxmertVisualAnswerHead(config, config.num_qa_labels)
        self.init_weights()

    def tie_weights(self) -> None:
        self.cls.predictions.decoder.weight = self.lxmert.embeddings.word_embeddings.weight

    def _gather(self, device: torch.device) -> bool:
        if self.config.gather_labelled_rows is not None:
            return self.config.gather_labelled_rows
        return device.type == "cpu"

    def forward(self, input_ids: torch.Tensor, visual_feats: torch.Tensor, visual_pos: torch.Tensor,
                attention_mask: torch.Tensor | None = None,
                visual_attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None,
                obj_labels: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                matched_label: torch.Tensor | None = None,
                ans: torch.Tensor | None = None,
                sentence_words: torch.Tensor | None = None,
                output_attentions: bool = False, output_hidden_states: bool = False,
                visual_label_loss_scope: str | None = None,
                visual_loss_normalizer: float | None = None,
                loss_weights: dict[str, float] | None = None) -> LxmertForPreTrainingOutput:
        """transformers' argument semantics (ignore index -100; `obj_labels` maps "obj"/"attr"
        to (label ids, confidence) and "feat" to (original features, feature mask)).

        `visual_label_loss_scope` ("all" | "masked") and `visual_loss_normalizer` override the
        config for this call; `loss_weights` scales tasks in the total (e.g. {"qa": 0.0}).

        `sentence_words` (B, T) token ids, -100 where not a target: not in the reference. Adds the
        loss "words": the MLM head (tied to the word embeddings) at the [CLS] position predicts
        the sentence's bag of words. It gives [CLS] a first-order reason to carry the sentence's
        content words, the step on which matching and presence questions stall when a small model
        is pretrained from scratch (docs/pretraining.md).
        """
        config = self.config
        encoded = self.lxmert(input_ids, visual_feats, visual_pos, attention_mask, visual_attention_mask,
                              token_type_ids, output_attentions, output_hidden_states)
        lang, visn, pooled = encoded.language_output, encoded.vision_output, encoded.pooled_output
        gather = self._gather(lang.device)
        zero = lang.new_zeros((), dtype=torch.float32)
        losses: dict[str, torch.Tensor] = {}
        out = LxmertForPreTrainingOutput(
            language_output=lang, vision_output=visn, pooled_output=pooled,
            language_hidden_states=encoded.language_hidden_states,
            vision_hidden_states=encoded.vision_hidden_states,
            language_attentions=encoded.language_attentions, vision_attentions=encoded.vision_attentions,
            cross_encoder_attentions=encoded.cross_encoder_attentions,
            cross_encoder_attentions_vision=encoded.cross_encoder_attentions_vision)

        # masked LM: the 30522-way decoder only where there is a label
        if labels is None:
            out.prediction_logits = self.cls.predictions(lang)
        elif config.task_mask_lm:
            flat_labels = labels.reshape(-1)
            flat_lang = lang.reshape(-1, lang.shape[-1])
            rows = _labelled_rows(flat_labels, gather)
            if rows is not None:
                flat_lang, flat_labels = flat_lang.index_select(0, rows), flat_labels.index_select(0, rows)
            out.masked_lm_logits = self.cls.predictions(flat_lang)
            out.masked_lm_labels = flat_labels
            losses["mlm"] = _mean_cross_entropy(out.masked_lm_logits, flat_labels)

        out.cross_relationship_score = self.cls.seq_relationship(pooled)
        if matched_label is not None and config.task_matched:
            losses["matched"] = _mean_cross_entropy(out.cross_relationship_score, matched_label.reshape(-1))

        if obj_labels is not None and config.task_obj_predict:
            scores = self.obj_predict_head(visn)
            out.visual_prediction_scores = scores
            losses.update(self._visual_losses(scores, obj_labels,
                                              visual_label_loss_scope or config.visual_label_loss_scope,
                                              visual_loss_normalizer if visual_loss_normalizer is not None
                                              else config.visual_loss_normalizer))

        if config.task_qa:
            if ans is None:
                out.question_answering_score = self.answer_head(pooled)
            else:
                qa_labels = ans.reshape(-1)
                qa_input = pooled
                rows = _labelled_rows(qa_labels, gather)
                if rows is not None:
                    qa_input, qa_labels = pooled.index_select(0, rows), qa_labels.index_select(0, rows)
                out.qa_logits = self.answer_head(qa_input)
                out.qa_labels = qa_labels
                losses["qa"] = _mean_cross_entropy(out.qa_logits, qa_labels)

        if sentence_words is not None:
            losses["words"] = sentence_words_loss(self.cls.predictions(lang[:, 0]), sentence_words)

        if labels is None and matched_label is None and obj_labels is None and ans is None \
                and sentence_words is None:
            return out
        total = zero
        for task, value in losses.items():
            weight = 1.0 if loss_weights is None else loss_weights.get(task, 1.0)
            total = total + (value if weight == 1.0 else value * weight)
        out.loss = total
        out.loss_per_task = {task: losses.get(task, zero) for task in TASKS}
        if "words" in losses:
            out.loss_per_task["words"] = losses["words"]
        return out

    def _visual_losses(self, scores, obj_labels, scope: str, normalizer: float) -> dict[str, torch.Tensor]:
        """Reference rules (Q2): every loss is a mean over all B*N objects times `normalizer`;
        obj/attr CE weighted by confidence (and by the feature mask when scope == "masked"),
        feat SmoothL1 (mean over dims) weighted by the feature mask."""
        if scope not in ("all", "masked"):
            raise ValueError(f"visual_label_loss_scope must be 'all' or 'masked', got {scope!r}")
        feat_mask = None
        if scope == "masked":
            if "feat" not in obj_labels:
                raise ValueError("visual_label_loss_scope='masked' needs obj_labels['feat'] = (feats, feat_mask)")
            feat_mask = obj_labels["feat"][1].reshape(-1).float()
        losses = {}
        for key, prediction in scores.items():
            if key not in obj_labels:
                raise ValueError(f"obj_labels has no entry {key!r} for the enabled visual loss "
                                 f"(keys given: {sorted(obj_labels)})")
            label, weight = obj_labels[key]
            weight = weight.reshape(-1).float()
            if key == "feat":
                per_object = F.smooth_l1_loss(prediction.reshape(-1, prediction.shape[-1]).float(),
                                              label.reshape(-1, prediction.shape[-1]).float(),
                                              reduction="none").mean(1)
            else:
                per_object = F.cross_entropy(prediction.reshape(-1, prediction.shape[-1]).float(),
                                             label.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
                if feat_mask is not None:
                    weight = weight * feat_mask
            losses[key] = (per_object * weight).mean() * normalizer
        return losses


def soft_score_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """LXMERT's VQA/GQA fine-tuning loss: BCE-with-logits against soft scores, mean over
    (batch, answers), times the number of answers (= summed over answers, mean over batch)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float()) * logits.shape[-1]


class LxmertForQuestionAnswering(LxmertPreTrainedModel):
    """VQA/GQA model: backbone + `answer_head.logit_fc` on the pooled output.

    `labels` as transformers: class indices (B,) -> cross-entropy (ignore -100). Soft scores
    (B, num_answers) float -> LXMERT's BCE x num_answers (`soft_score_bce_loss`).
    """

    architecture = "LxmertForQuestionAnswering"

    def __init__(self, config: LxmertConfig):
        super().__init__(config)
        self.lxmert = LxmertModel(config, init_weights=False)
        self.answer_head = LxmertVisualAnswerHead(config, config.num_qa_labels)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, visual_feats: torch.Tensor, visual_pos: torch.Tensor,
                attention_mask: torch.Tensor | None = None,
                visual_attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None,
                output_attentions: bool = False, output_hidden_states: bool = False
                ) -> LxmertForQuestionAnsweringOutput:
        encoded = self.lxmert(input_ids, visual_feats, visual_pos, attention_mask, visual_attention_mask,
                              token_type_ids, output_attentions, output_hidden_states)
        logits = self.answer_head(encoded.pooled_output)
        loss = None
        if labels is not None:
            if labels.is_floating_point():
                loss = soft_score_bce_loss(logits, labels)
            else:
                loss = _mean_cross_entropy(logits, labels.reshape(-1))
        return LxmertForQuestionAnsweringOutput(loss=loss, question_answering_score=logits,
                                                pooled_output=encoded.pooled_output, encoder_output=encoded)


class LxmertForNLVR2(LxmertPreTrainedModel):
    """NLVR2: the sentence against each of two images, pooled outputs concatenated,
    Linear(2h,2h) -> GeLU -> LN -> Linear(2h,2). The head is `logit_fc` at the top level, the
    original code's name, so its fine-tuned NLVR2 weights import with only the encoder rename.
    """

    architecture = "LxmertForNLVR2"

    def __init__(self, config: LxmertConfig):
        super().__init__(config)
        self.lxmert = LxmertModel(config, init_weights=False)
        self.logit_fc = _answer_mlp(2 * config.hidden_size, 2 * config.hidden_size, 2, config.layer_norm_eps)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, visual_feats: torch.Tensor, visual_pos: torch.Tensor,
                attention_mask: torch.Tensor | None = None,
                visual_attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> LxmertForNLVR2Output:
        """`visual_feats` (B, 2, N, D), `visual_pos` (B, 2, N, 4), `visual_attention_mask`
        (B, 2, N) or None; text inputs (B, T) are paired with both images."""
        if visual_feats.dim() != 4 or visual_feats.shape[1] != 2:
            raise ValueError(f"NLVR2 visual_feats must be (batch, 2, boxes, dim), got {tuple(visual_feats.shape)}")
        b = input_ids.shape[0]

        def twice(x):  # (B, ...) -> (2B, ...) ordered [ex0-img0, ex0-img1, ex1-img0, ...]
            return None if x is None else x.repeat_interleave(2, dim=0)

        encoded = self.lxmert(twice(input_ids), visual_feats.flatten(0, 1), visual_pos.flatten(0, 1),
                              twice(attention_mask),
                              None if visual_attention_mask is None else visual_attention_mask.flatten(0, 1),
                              twice(token_type_ids))
        pooled = encoded.pooled_output.reshape(b, -1)
        logits = self.logit_fc(pooled)
        loss = None if labels is None else _mean_cross_entropy(logits, labels.reshape(-1).long())
        return LxmertForNLVR2Output(loss=loss, logits=logits, pooled_output=pooled)


MODEL_CLASSES = {cls.architecture: cls for cls in
                 (LxmertModel, LxmertForPreTraining, LxmertForQuestionAnswering, LxmertForNLVR2)}

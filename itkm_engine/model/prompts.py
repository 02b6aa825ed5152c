"""Learned prompts through CLIP's real, frozen text transformer (ITKM Stage II).

The prompt ``"A photo of a X1 X2 X3 X4 person."`` is tokenised once.  The token embeddings of
every fixed word (start token, "a photo of a", "person.", end token, padding) are kept as
buffers; the ``n_ctx`` placeholder positions get learnable vectors, one set per pseudo-identity
(Stage I cluster).  The assembled embeddings then go through the rest of ``CLIP.encode_text``
unchanged (positional embedding, transformer with its causal mask, ``ln_final``, pooling at the
template's end-of-text position, ``text_projection``) via
:meth:`~itkm_engine.model.backbone.ITKMModel.encode_text_embeddings`.  The text tower stays
frozen; only the context vectors learn.

The number of clusters changes every round, so Stage II builds a fresh learner each round.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ItkmError
from .backbone import ITKMModel

__all__ = ["PromptLearner", "default_template", "CTX_INIT_STD"]

CTX_INIT_STD = 0.02
CTX_INITS = ("random", "word")


def default_template(n_ctx: int = 4, placeholder: str = "X") -> str:
    """``"A photo of a X X X X person."`` with ``n_ctx`` placeholders."""
    return "A photo of a " + " ".join([placeholder] * n_ctx) + " person."


class PromptLearner(nn.Module):
    """Per-class learnable prompt tokens; ``forward(labels)`` -> normalised text features.

    ``model`` is only referenced (not registered as a submodule), so ``parameters()`` and
    ``state_dict()`` of the learner hold just the context vectors ``ctx [C, n_ctx, width]``.
    ``ctx_init``: ``"random"`` (N(0, 0.02), CoOp's choice) or ``"word"`` (the token embedding of
    the placeholder word, so an untrained prompt reads as the literal template).
    """

    def __init__(
        self,
        model: ITKMModel,
        num_classes: int,
        n_ctx: int = 4,
        template: str | None = None,
        *,
        placeholder: str = "X",
        ctx_init: str = "random",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ItkmError(f"the prompt learner needs at least one class (cluster), got {num_classes}")
        if n_ctx < 1:
            raise ItkmError(f"n_ctx must be at least 1, got {n_ctx}")
        if ctx_init not in CTX_INITS:
            raise ItkmError(f"ctx_init must be one of {', '.join(CTX_INITS)}, got {ctx_init!r}")
        template = template if template is not None else default_template(n_ctx, placeholder)
        self.__dict__["_model"] = model  # a reference, not a submodule (see class docstring)
        self.num_classes = int(num_classes)
        self.n_ctx = int(n_ctx)
        self.template = template

        text = model.text_side()
        ids = model.tokenize([template])  # [1, L]
        start = _placeholder_start(model, ids[0], placeholder, n_ctx, template)
        if int(ids[0].argmax()) <= start + n_ctx - 1:
            raise ItkmError(f"the prompt template {template!r} is longer than the text context ({text.context_length} tokens)")
        with torch.no_grad():
            emb = text.token_embedding(ids).detach()  # [1, L, W]
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("token_prefix", emb[:, :start].clone(), persistent=False)
        self.register_buffer("token_suffix", emb[:, start + n_ctx :].clone(), persistent=False)
        self.ctx_start = start

        width = emb.shape[-1]
        if ctx_init == "word":
            ctx = emb[:, start : start + n_ctx].expand(self.num_classes, -1, -1).clone()
        else:
            ctx = torch.empty(self.num_classes, n_ctx, width, device=emb.device, dtype=emb.dtype)
            ctx.normal_(0.0, CTX_INIT_STD)
        self.ctx = nn.Parameter(ctx)

    @property
    def model(self) -> ITKMModel:
        return self.__dict__["_model"]

    def prompt_embeddings(self, labels: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[B, L, W]`` of the prompts of classes ``labels``."""
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.ctx.device).reshape(-1)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ItkmError(f"prompt labels must lie in 0..{self.num_classes - 1}")
        b = labels.shape[0]
        ctx = self.ctx[labels]
        prefix = self.token_prefix.expand(b, -1, -1).to(ctx.dtype)
        suffix = self.token_suffix.expand(b, -1, -1).to(ctx.dtype)
        return torch.cat([prefix, ctx, suffix], dim=1)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """Normalised text features ``[B, embed_dim]`` of the classes ``labels``; differentiable
        with respect to ``ctx`` (the text tower itself is frozen)."""
        x = self.prompt_embeddings(labels)
        ids = self.token_ids.expand(x.shape[0], -1)  # pooling uses the template's end-of-text
        return F.normalize(self.model.encode_text_embeddings(x, ids), dim=-1)

    @torch.no_grad()
    def all_features(self, batch_size: int = 256) -> torch.Tensor:
        """Normalised text features of every class ``[C, embed_dim]`` (no gradients)."""
        out = [
            self(torch.arange(i, min(i + batch_size, self.num_classes), device=self.ctx.device))
            for i in range(0, self.num_classes, batch_size)
        ]
        return torch.cat(out).float()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, n_ctx={self.n_ctx}, template={self.template!r}"


def _placeholder_start(model: ITKMModel, ids: torch.Tensor, placeholder: str, n_ctx: int, template: str) -> int:
    """Position of the first of ``n_ctx`` consecutive placeholder tokens in ``ids``."""
    tok = model.tokenize([placeholder])[0]
    body = tok[1 : int(tok.argmax())]  # between start and end tokens
    if body.numel() != 1:
        raise ItkmError(f"the placeholder {placeholder!r} must be one token for the tokenizer")
    pid = int(body[0])
    pos = (ids == pid).nonzero(as_tuple=True)[0].tolist()
    consecutive = bool(pos) and pos == list(range(pos[0], pos[0] + len(pos)))
    if len(pos) != n_ctx or not consecutive:
        raise ItkmError(
            f"the prompt template {template!r} must hold exactly {n_ctx} consecutive "
            f"{placeholder!r} placeholders (n_ctx = {n_ctx}), found {len(pos)}"
        )
    return pos[0]

"""Several LoRA adapters of one base model, applied per batch row with static shapes.

The provider serves the base model and its fine-tunes from ONE copy of the base weights. Each
adapted linear layer keeps all loaded adapters side by side:

    y = W x + ((x @ A_cat^T) * row_mask) @ B_cat^T

``A_cat`` stacks every adapter's ``lora_A`` (rank columns one after another), ``B_cat`` every
``lora_B`` with its scaling folded in, and ``row_mask`` (one row per batch row) is 1 on the rank
columns of that row's adapter and 0 elsewhere, so a base-model row gets exactly ``W x``. This is
the same arithmetic as PEFT's mixed-adapter batches (``adapter_names=[...]``), but with tensor
shapes that do not depend on which adapters a batch holds, so ``torch.compile`` / CUDA graphs
capture it once (PEFT's version indexes sub-batches by Python lists and recompiles per batch mix).
Run eagerly (CPU, or a GPU with ``compile=false``), a batch uses only the span of columns its rows'
adapters hold (``RowMask.active``) and none for base rows alone: a study evaluates one model at a
time while every adapter met so far stays loaded (``bench/adapters.py --one-model``: rows of one
adapter with six loaded ran at 0.83x the speed of the same rows with it loaded alone before this,
0.95x after, 0.5B shape on CPU). Compiled, every column is computed, so one graph serves all.
With ``AdapterSet.fuse_input`` (the engine's ``lora_fuse_input``) and the factors in the base
weight's dtype, ``A_cat`` is stacked under ``W`` in one matrix (the base layer's weight becomes a
view of it, so the base weights are still held once) and one product gives ``W x`` and
``A_cat x`` together; a weight tied to another module (an LM head tied to the embeddings) is left
as it is. A batch of one adapter's rows alone can instead run with that adapter merged into the
base weights (``AdapterSet.merge``, the engine's ``lora_merge``), with no adapter product at all.

Adapters are read from their folders with PEFT's own config and weight loaders. Only plain LoRA
on linear layers is served (no DoRA, LoRA bias, modules_to_save, fan_in_fan_out, embedding or
other PEFT types); anything else is refused with a message naming the adapter's config field.
The adapter product is computed in ``AdapterSet.dtype``: by default (the engine's
``lora_dtype="model"``) the base model's own dtype, as vLLM does, so on a GPU in bf16 it runs on the
tensor cores; ``lora_dtype="float32"`` keeps PEFT's default (``autocast_adapter_dtype=True``:
float32 factors and product under a 16-bit base), which on an H100 runs the adapter matmuls at
float32 speed, about a fifteenth of bf16's. Six r=32 adapters on Qwen2.5-1.5B add about 17% to a
token's multiply-adds, so there that would more than double the compute of a step. On CPU the
model runs in float32 and both are the same.
"""

from __future__ import annotations

import collections
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from empersona.errors import EmpersonaError, located

if TYPE_CHECKING:
    import torch
    from torch import nn

PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraWeights:
    """One adapter's LoRA factors for one linear layer; ``scaling`` multiplies B(A x)."""

    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r]
    scaling: float


@dataclass(frozen=True)
class Adapter:
    """A loaded adapter: its folder, the base it was trained on, and its per-layer factors."""

    path: Path
    base_model: str
    layers: dict[str, LoraWeights]

    @property
    def rank(self) -> int:
        """The widest rank over its layers (its column block in the stacked factors)."""
        return max(w.a.shape[0] for w in self.layers.values())


def read_adapter(path: Path) -> Adapter:
    """Load an adapter folder (``adapter_config.json`` + weights) into per-layer factors."""
    from peft import LoraConfig
    from peft.utils import load_peft_weights
    from peft.utils.other import get_pattern_key

    path = Path(path).resolve()
    config_file = path / "adapter_config.json"
    if not config_file.exists():
        raise EmpersonaError(
            located(config_file, None, None, "no adapter config here", "pass a PEFT LoRA adapter folder")
        )
    try:
        config = LoraConfig.from_pretrained(str(path))
    except Exception as exc:  # PEFT raises ValueError/TypeError/KeyError for foreign configs
        raise EmpersonaError(
            located(config_file, None, "peft_type", f"not a LoRA config ({exc})", "serve LoRA adapters only")
        ) from exc
    unsupported = {
        "use_dora": bool(config.use_dora),
        "lora_bias": bool(getattr(config, "lora_bias", False)),
        "bias": config.bias != "none",
        "modules_to_save": bool(config.modules_to_save),
        "fan_in_fan_out": bool(config.fan_in_fan_out),
        "layer_replication": bool(config.layer_replication),
        "target_parameters": bool(getattr(config, "target_parameters", None)),
        # variants whose forward pass is not x @ A @ B * scaling on every token
        "alora_invocation_tokens": bool(getattr(config, "alora_invocation_tokens", None)),
        "arrow_config": bool(getattr(config, "arrow_config", None)),
        "use_bdlora": bool(getattr(config, "use_bdlora", None)),
        "kasa_config": bool(getattr(config, "kasa_config", None)),
        "use_qalora": bool(getattr(config, "use_qalora", False)),
    }
    for name, used in unsupported.items():
        if used:
            raise EmpersonaError(
                located(
                    config_file,
                    None,
                    name,
                    "this adapter feature is not served by the empersona provider",
                    "use inspect's hf/ provider for this adapter, or merge it into the base model",
                )
            )
    state = load_peft_weights(str(path), device="cpu")
    layers: dict[str, LoraWeights] = {}
    for key, tensor in state.items():
        if not key.endswith(".lora_A.weight"):
            if key.endswith(".lora_B.weight"):
                continue
            raise EmpersonaError(
                located(path, None, key, "weight is not a LoRA factor of a linear layer", "serve plain LoRA adapters only")
            )
        module = key.removeprefix(PEFT_PREFIX).removesuffix(".lora_A.weight")
        b = state.get(key.replace(".lora_A.weight", ".lora_B.weight"))
        if b is None:
            raise EmpersonaError(located(path, None, key, "lora_A without lora_B", "re-save the adapter with PEFT"))
        rank = tensor.shape[0]
        alpha_key = get_pattern_key(list(config.alpha_pattern), module)
        alpha = config.alpha_pattern.get(alpha_key, config.lora_alpha)
        scaling = alpha / rank**0.5 if config.use_rslora else alpha / rank
        layers[module] = LoraWeights(a=tensor.float(), b=b.float(), scaling=float(scaling))
    if not layers:
        raise EmpersonaError(located(path, None, None, "adapter holds no LoRA weights", "re-save the adapter with PEFT"))
    return Adapter(path=path, base_model=str(config.base_model_name_or_path or ""), layers=layers)


@dataclass
class RowMask:
    """The per-row adapter mask shared by every adapted layer; set once per batch."""

    columns: int = 0
    mask: torch.Tensor | None = None
    buffers: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    dtype: torch.dtype | None = None  # of the mask and the adapter product; None: float32
    # the rank columns the batch's adapters span, (start, stop); None: no row has an adapter
    active: tuple[int, int] | None = None
    # every row of the batch uses the adapter merged into the base weights (or the base model
    # with none merged): the model runs on its plain base layers (``AdapterSet.merge`` and ``wrap``)
    merged: bool = False

    def set_rows(self, blocks: list[tuple[int, int] | None], device: torch.device) -> None:
        """Row i uses columns ``blocks[i] = (start, stop)``; ``None`` is the base model (no adapter)."""
        import torch

        key = (len(blocks), str(device))
        dtype = self.dtype or torch.float32
        buffer = self.buffers.get(key)
        if buffer is None or buffer.shape[1] != self.columns or buffer.dtype != dtype:
            buffer = torch.zeros(len(blocks), self.columns, dtype=dtype, device=device)
            if device.type == "cuda":
                # one fixed address per batch size: CUDA graphs replay it without copies
                torch._dynamo.mark_static_address(buffer)
            self.buffers[key] = buffer
        host = torch.zeros(len(blocks), self.columns, dtype=dtype)
        for row, block in enumerate(blocks):
            if block is not None:
                host[row, block[0] : block[1]] = 1.0
        buffer.copy_(host)
        self.mask = buffer
        used = [block for block in blocks if block is not None]
        self.active = (min(b[0] for b in used), max(b[1] for b in used)) if used else None


def _update(weights: LoraWeights, device: torch.device) -> torch.Tensor:
    """An adapter's update of one layer's weight, ``scaling * B A``, in float32."""
    return (weights.b.to(device) * weights.scaling) @ weights.a.to(device)


@functools.cache
def _make_slot_linear_class() -> type[nn.Module]:
    """Build the module class lazily so importing this file does not import torch."""
    import torch
    from torch import nn

    class SlotLinear(nn.Module):
        """A linear layer plus every loaded adapter's LoRA, selected per batch row by ``RowMask``."""

        def __init__(self, base: nn.Linear, rows: RowMask) -> None:
            super().__init__()
            self.base = base
            self.rows = rows
            device = base.weight.device
            self.register_buffer("a_cat", torch.zeros(0, base.in_features, device=device), persistent=False)
            self.register_buffer("b_cat", torch.zeros(base.out_features, 0, device=device), persistent=False)
            # with fused input: the base weight with every adapter's A below it, [out + columns, in]
            # (the base weight and ``a_cat`` are views of it), and the base bias padded with zeros
            self.register_buffer("w_cat", None, persistent=False)
            self.register_buffer("bias_cat", None, persistent=False)

        def set_factors(self, a_cat: torch.Tensor, b_cat: torch.Tensor, fuse: bool = False) -> None:
            """Install the stacked factors; ``fuse``: stack A under the base weight (same dtype only)."""
            weight = self.base.weight
            dtype = self.rows.dtype or torch.float32
            a_cat = a_cat.to(device=weight.device, dtype=dtype)
            self.b_cat = b_cat.to(device=weight.device, dtype=dtype)
            if not (fuse and dtype == weight.dtype):
                self.w_cat = self.bias_cat = None
                self.a_cat = a_cat
                return
            out_features = self.base.out_features
            stacked = torch.cat([weight.detach(), a_cat])
            # the base layer keeps its parameter, now a view of the stacked matrix: no second copy
            self.base.weight = nn.Parameter(stacked[:out_features], requires_grad=False)
            self.w_cat, self.a_cat = stacked, stacked[out_features:]
            bias = self.base.bias
            self.bias_cat = None if bias is None else torch.cat([bias.detach(), bias.new_zeros(a_cat.shape[0])])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mask = self.rows.mask
            assert mask is not None, "RowMask.set_rows must run before a forward pass"
            # Run eagerly, a batch computes only the columns of the adapters its rows use (none
            # for base rows alone: a study evaluates one model at a time, and every adapter it
            # has loaded would otherwise cost every row). Compiled, all columns: the span would
            # be one more graph per adapter.
            start, stop = 0, mask.shape[1]
            if not torch.compiler.is_compiling():
                if self.rows.active is None:
                    return self.base(x)
                start, stop = self.rows.active
            if self.w_cat is not None:
                # one GEMM gives the base output and every adapter's A x
                both = torch.nn.functional.linear(x, self.w_cat, self.bias_cat)
                out, hidden = both.split([self.base.out_features, self.a_cat.shape[0]], dim=-1)
                hidden = hidden[..., start:stop]
            else:
                out = self.base(x)
                hidden = torch.matmul(x.to(self.a_cat.dtype), self.a_cat[start:stop].t())
            mask = mask[:, start:stop]
            hidden = hidden * mask.view(mask.shape[0], *([1] * (hidden.dim() - 2)), mask.shape[1])
            return out + torch.matmul(hidden, self.b_cat[:, start:stop].t()).to(out.dtype)

    return SlotLinear


@dataclass
class AdapterSet:
    """The adapters loaded into one base model, each owning a block of rank columns."""

    model: nn.Module
    rows: RowMask = field(default_factory=RowMask)
    fuse_input: bool = False  # stack the adapters' A under the base weight where dtypes and sharing allow
    adapters: dict[str, Adapter] = field(default_factory=dict)
    blocks: dict[str, tuple[int, int]] = field(default_factory=dict)
    merged_key: str | None = None  # the adapter merged into the base weights now, if any
    # per layer of the merged adapter: the elements that taking its update out again would not
    # round back to the base weight (flat positions, original values), to restore it bit for bit
    fixups: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    merge_complete: bool = True  # False while (or after) a merge of ``merged_key`` stopped part-way
    slots: dict[str, nn.Module] = field(default_factory=dict)  # the SlotLinear of each adapted layer
    wrapped: bool = True  # the adapted layers are SlotLinear modules (False: their plain base layers)

    def key(self, path: Path) -> str:
        """The name an adapter folder is served under (its resolved path)."""
        return str(Path(path).resolve())

    def add(self, adapter: Adapter) -> str:
        """Install an adapter (idempotent per folder); returns its key."""
        key = self.key(adapter.path)
        if key in self.adapters:
            return key
        modules = dict(self.model.named_modules())
        for module_name, weights in adapter.layers.items():
            target = modules.get(module_name)
            if target is None:
                raise EmpersonaError(
                    located(
                        adapter.path,
                        None,
                        module_name,
                        "adapter targets a layer the base model does not have",
                        "check base_model_name_or_path in adapter_config.json",
                    )
                )
            base = target.base if isinstance(target, _make_slot_linear_class()) else target
            if tuple(weights.a.shape[1:]) != (base.in_features,) or weights.b.shape[0] != base.out_features:
                raise EmpersonaError(
                    located(
                        adapter.path,
                        None,
                        module_name,
                        f"LoRA shapes {tuple(weights.a.shape)}/{tuple(weights.b.shape)} do not fit "
                        f"the base layer ({base.in_features} -> {base.out_features})",
                        "serve the adapter on the base model it was trained on",
                    )
                )
        self.merge(None)  # restacking reads the base weights: they must be the base model's
        self.wrap(True)
        start = self.rows.columns
        self.adapters[key] = adapter
        self.blocks[key] = (start, start + adapter.rank)
        self.rows.columns = start + adapter.rank
        self._rebuild()
        return key

    def remove(self, key: str) -> None:
        """Unload an adapter: its rank columns go and the others' close up (the base weights are
        restored first if it is the merged one). Layers no adapter adapts any more keep their
        wrapper with no columns; with the last adapter gone the model gets its own layers back."""
        if key not in self.adapters:
            return
        self.merge(None)
        del self.adapters[key]
        if not self.adapters:  # the base model's own layers back, as before any adapter was added
            self.wrap(False)
            self.slots.clear()
            self.wrapped = True
            self.blocks = {}
            self.rows.columns, self.rows.mask, self.rows.active = 0, None, None
            return
        self.wrap(True)
        start = 0
        self.blocks = {}
        for name, adapter in self.adapters.items():
            self.blocks[name] = (start, start + adapter.rank)
            start += adapter.rank
        self.rows.columns = start
        self._rebuild()

    def block(self, key: str | None) -> tuple[int, int] | None:
        """The rank columns of an adapter key; ``None`` (the base model) has none."""
        return None if key is None else self.blocks[key]

    def can_merge(self, key: str | None) -> bool:
        """Whether an adapter may be merged: not when it adapts a weight another module shares
        (an LM head tied to the embeddings), which the merge would change for both, nor a weight
        that is not a plain contiguous floating-point matrix (a quantised layer's packed integers)."""
        if key is None:
            return True
        uses = self._parameter_uses()

        def mergeable(base: nn.Linear) -> bool:
            weight = base.weight
            shape = (base.out_features, base.in_features)
            plain = weight.dtype.is_floating_point and tuple(weight.shape) == shape and weight.is_contiguous()
            return plain and uses[id(weight)] == 1

        return all(mergeable(self.slots[name].base) for name in self.adapters[key].layers)

    def _parameter_uses(self) -> collections.Counter[int]:
        """How many modules hold each parameter (by id): more than one for a tied weight."""
        return collections.Counter(id(p) for _, p in self.model.named_parameters(remove_duplicate=False))

    def merge(self, key: str | None) -> None:
        """Make the base weights hold ``W + scaling * B A`` of adapter ``key`` (``None``: the base's own).

        A batch whose rows all use one adapter (a study evaluates one model at a time) then runs
        the base model's products alone, on its plain layers (``wrap``), with no adapter products
        (``RowMask.merged``). The update is computed in float32 and rounded once into the weight's
        dtype, as PEFT's ``merge_and_unload`` does; in bf16 that rounding makes the logits differ
        slightly from the unmerged products'. Taking the update out again restores the base weights bit for bit
        without a copy of them: ``round(round(W + D) - D)`` is ``W`` for most elements, and the
        merge keeps the positions and original values of the rest (``fixups``; 0.3-10% of a
        layer's elements for updates 0.1-14% of the weights' size, 6 bytes each in bf16, against
        2 for a whole copy). The update is recomputed for the restore by the same product on the
        same device, which gives the same bits.
        """
        import torch

        if key == self.merged_key and self.merge_complete:
            return
        with torch.no_grad():
            self._unmerge()
            if key is None:
                return
            # a merge cut short (out of memory for a layer's float32 update) leaves the layers done so
            # far in ``fixups`` and ``merge_complete`` False: the next call takes them out first
            self.merged_key, self.merge_complete = key, False
            for name, weights in self.adapters[key].layers.items():
                weight = self.slots[name].base.weight
                update = _update(weights, weight.device)
                merged = (weight.float() + update).to(weight.dtype)
                back = (merged.float() - update).to(weight.dtype)
                where = torch.nonzero(back.view(-1) != weight.view(-1)).squeeze(1).to(torch.int32)
                values = weight.view(-1)[where].clone()
                weight.copy_(merged)
                self.fixups[name] = (where, values)
            self.merge_complete = True

    def _unmerge(self) -> None:
        """Take the merged adapter's update out of every layer that holds it (all of them, or those a
        merge cut short had reached; a restore cut short goes on from where it stopped)."""
        if self.merged_key is None:
            return
        layers = self.adapters[self.merged_key].layers
        for name in list(self.fixups):
            weight = self.slots[name].base.weight
            back = (weight.float() - _update(layers[name], weight.device)).to(weight.dtype)
            where, values = self.fixups[name]
            back.view(-1)[where] = values
            weight.copy_(back)
            del self.fixups[name]
        self.merged_key, self.merge_complete = None, True

    def wrap(self, on: bool) -> None:
        """Put the SlotLinear modules in the model (``on``), or their plain base layers back.

        A merged batch needs no adapter product, and with the base layers back the model is the
        very module tree the base model was compiled as: a compiled decode step (one graph per
        batch shape, about 50 s each for a 1.5B model on an H100) is reused instead of compiled
        again for the wrapped tree, whose adapter products a merged batch would not run anyway.
        """
        if on == self.wrapped:
            return
        modules = dict(self.model.named_modules())
        for name, slot in self.slots.items():
            parent_name, _, child = name.rpartition(".")
            parent = modules[parent_name] if parent_name else self.model
            setattr(parent, child, slot if on else slot.base)
        self.wrapped = on

    def _rebuild(self) -> None:
        """Wrap every adapted layer once and restack all adapters' factors into it."""
        import torch

        slot_linear = _make_slot_linear_class()
        # every wrapped layer, also one no loaded adapter adapts any more (``remove``): its factors shrink to the columns
        targets = sorted({name for adapter in self.adapters.values() for name in adapter.layers} | set(self.slots))
        modules = dict(self.model.named_modules())
        # a weight tied to another module (an LM head tied to the embeddings) is left unstacked
        uses = self._parameter_uses()
        for name in targets:
            module = modules[name]
            if not isinstance(module, slot_linear):
                parent_name, _, child = name.rpartition(".")
                parent = modules[parent_name] if parent_name else self.model
                module = slot_linear(module, self.rows)
                setattr(parent, child, module)
            self.slots[name] = module
            base = module.base
            a_cat = torch.zeros(self.rows.columns, base.in_features)
            b_cat = torch.zeros(base.out_features, self.rows.columns)
            for key, adapter in self.adapters.items():
                weights = adapter.layers.get(name)
                if weights is None:
                    continue
                start = self.blocks[key][0]
                rank = weights.a.shape[0]
                a_cat[start : start + rank] = weights.a
                b_cat[:, start : start + rank] = weights.b * weights.scaling
            module.set_factors(a_cat, b_cat, fuse=self.fuse_input and uses[id(base.weight)] == 1)

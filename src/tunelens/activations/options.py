"""Options of the activation analysis, checked once at the boundary, and the definitions it reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from tunelens.errors import TunelensError

#: ``gate``: a = 1[act(gate_proj(x)) > 0]; ``gate_up``: a = 1[act(gate_proj(x)) * up_proj(x) > 0]
Pattern = Literal["gate", "gate_up"]
#: per-token distance between two models' patterns, normalised by d_ff
Distance = Literal["hamming", "levenshtein"]
#: compute dtype of the forward pass; ``auto`` = the float dtype the first model is stored in
DType = Literal["auto", "float32", "bfloat16", "float16"]
#: prepend the tokenizer's BOS token to every sequence: ``auto`` = when the tokenizer defines one
Bos = Literal["auto", "yes", "no"]


@dataclass(frozen=True)
class ActivationOptions:
    """How the corpus is cut into sequences and how the models run over it."""

    seq_len: int = 512
    max_tokens: int | None = None
    batch_size: int = 8
    bos: Bos = "auto"
    count_bos: bool = False
    pattern: Pattern = "gate"
    distance: Distance = "hamming"
    dtype: DType = "auto"
    device: str = "cpu"
    store: bool = True
    work_dir: Path | None = None
    text_field: str = "text"
    tokenizer: Path | None = None
    quiet: bool = False
    allow_nonfinite: bool = False  # NaN / Inf activations: analyse anyway, affected layers null (else an error)

    def __post_init__(self) -> None:
        if self.seq_len < 2:
            raise TunelensError(f"--seq-len must be at least 2, got {self.seq_len}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise TunelensError(f"--max-tokens must be positive, got {self.max_tokens}")
        if self.batch_size < 1:
            raise TunelensError(f"--batch-size must be positive, got {self.batch_size}")
        for value, kind, flag in (
            (self.bos, Bos, "--bos"),
            (self.pattern, Pattern, "--pattern"),
            (self.distance, Distance, "--distance"),
            (self.dtype, DType, "--dtype"),
        ):
            if value not in get_args(kind):
                raise TunelensError(f"{flag} must be one of {', '.join(get_args(kind))}, got {value!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise TunelensError(f"--device must be cpu or cuda[:N], got {self.device!r}")
        if not self.text_field:
            raise TunelensError("--text-field must not be empty")

    def describe(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def definitions(options: ActivationOptions) -> dict[str, str]:
    """The exact meaning of every number in ``activations.json`` / ``activations.csv``."""
    act = (
        "a[l,t,j] = 1[act(gate_proj(x))_j > 0] where x is the input of layer l's MLP and act(gate_proj(x)) is "
        "the output of the layer's own activation module (mlp.act_fn; Phi-3 mlp.activation_fn on the gate half "
        "of gate_up_proj; GPT-2 mlp.act on c_fc(x), no gate) as the model computes it in the run dtype. For "
        "SiLU/GELU this equals gate_proj(x)_j > 0 except where the activation rounds to exactly 0"
        if options.pattern == "gate"
        else "a[l,t,j] = 1[(act(gate_proj(x)) * up_proj(x))_j > 0]: the input of the layer's down projection "
        "(mlp.down_proj), as the model computes it in the run dtype"
    )
    bos = "included" if options.count_bos else "excluded"
    dist = (
        "Hamming(a_A[l,t], a_B[l,t]) / d_ff"
        if options.distance == "hamming"
        else "Levenshtein(active_A[l,t], active_B[l,t]) / d_ff, edit distance between the ascending lists of "
        "active neuron indices (insert, delete, substitute cost 1; rapidfuzz)"
    )
    return {
        "pattern": act,
        "tokens": f"positions of the packed corpus sequences; BOS positions {bos}; no padding is ever run "
        "(the last, shorter sequence runs alone at its own length)",
        "fraction_active": "per layer: sum over tokens and neurons of a / (tokens * d_ff); exact integer counts, "
        "float64 division",
        "distance": f"per layer: mean over tokens of {dist}; integer sums, float64 division. Both models see "
        "identical token ids",
        "hamming": "per layer: mean over tokens of Hamming(a_A, a_B) / d_ff (always reported)",
        "distance_quantiles": "per layer: p50 / p90 / p99 / max over tokens of the per-token distance "
        "(inverted-CDF quantiles of the exact per-token values)",
        "mean": "unweighted mean over layers of the per-layer value (models[].mean: of fraction_active; "
        "pairs[].mean: of distance; pairs[].hamming_mean: of hamming)",
        "active": "per layer: the exact integer count of (token, neuron) positions with a = 1 (int64)",
        "sums": "pairs[].sums.hamming_bits / distance_units: per layer, the exact integer sum over tokens of "
        "the per-token Hamming distance (bits) / of the chosen distance (bits or edits); distance = "
        "distance_units / (tokens * d_ff)",
        "d_ff": "MLP width: input width of the layer's down projection (GPT-2: c_proj)",
        "seconds": "models[].seconds: wall time of the model's pass over the corpus (forward + capture), "
        "excluding loading; tokens_per_second = tokens / seconds",
        "pattern_store": "bytes_per_token_per_layer = ceil(d_ff / 8); pattern_bytes = (models - 1) * layers * "
        "tokens * ceil(d_ff / 8) (every model but the last is stored); token_file_bytes = 4 * stream tokens; "
        "disk_bytes = their sum, the peak temporary disk use (removed at the end)",
        "models_resident": "one model in memory at a time; later models are compared with the stored patterns "
        "of earlier ones token by token while they run",
        "nonfinite": "models[].nonfinite_activations: per layer, the number of NaN / Inf values of the read "
        "activation (all positions, BOS included). Any is an error unless --allow-nonfinite; then that layer's "
        "fraction_active, every pair's distances at that layer, and the means over layers are null",
    }

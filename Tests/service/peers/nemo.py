"""NeMo-RL (NVIDIA-NeMo/RL at 7ea279abfbeb): its routed-experts envelope and what NeMo Gym checks.

- nemo_rl/utils/routed_experts_codec.py:24-25: "nrlre1:<dtype>:<S>x<L>x<K>:<base64 of C-contiguous bytes>";
  :37-41 allowed dtypes int8, int16, int32 (signed only); :62-67 encode = b64encode(memoryview(arr));
  :78-106 decode: split(":", 3), magic "nrlre1", known dtype, 3 dims, b64decode(validate=True), byte count
  S*L*K*itemsize, torch.frombuffer, cast to the caller's dtype.
- nemo_rl/models/generation/interfaces.py:13-16: a row of all -1 is a missing route; :42-50
  resolve_routed_experts_dtype: the narrowest signed dtype holding num_experts - 1 and -1.
- nemo_rl/models/generation/vllm/utils.py:171, 220-234 pad_and_align_routed_expert_indices: T - 1 routes from
  vLLM, then rows up to T filled with arange(K): the envelope has exactly T rows, the last arange(K).
- nemo_rl/environments/nemo_gym.py:869-876: routed_experts.shape[0] must be >= prompt + generation tokens.
- The layer axis is the MoE layers only (codec docstring :16-17, :46).
"""
import base64

import numpy as np

MAGIC = "nrlre1"
ALLOWED = {"int8": np.int8, "int16": np.int16, "int32": np.int32}


def resolve_dtype(num_experts):
    """interfaces.py:42-50."""
    m = num_experts - 1
    return "int8" if m <= 127 else "int16" if m <= 32767 else "int32"


def encode(arr):
    """routed_experts_codec.py:56-67."""
    name = arr.dtype.name
    if name not in ALLOWED:
        raise ValueError(f"Unsupported routed_experts dtype {name}")
    s, l, k = arr.shape
    return f"{MAGIC}:{name}:{s}x{l}x{k}:" + base64.b64encode(memoryview(np.ascontiguousarray(arr))).decode("ascii")


def decode(payload, dtype=np.int16):
    """routed_experts_codec.py:76-106."""
    if not isinstance(payload, str):
        return np.asarray(payload, dtype=dtype)
    parts = payload.split(":", 3)
    if len(parts) != 4 or parts[0] != MAGIC:
        raise ValueError("not an nrlre1 envelope")
    if parts[1] not in ALLOWED:
        raise ValueError(f"Unsupported routed_experts dtype {parts[1]}")
    shape = tuple(int(x) for x in parts[2].split("x"))
    if len(shape) != 3:
        raise ValueError("routed_experts shape must have 3 dims")
    raw = base64.b64decode(parts[3], validate=True)
    wire = np.dtype(ALLOWED[parts[1]])
    if len(raw) != shape[0] * shape[1] * shape[2] * wire.itemsize:
        raise ValueError("routed_experts byte count does not match its shape")
    return np.frombuffer(raw, dtype=wire).reshape(shape).astype(dtype)


def pad_and_align(routed, valid_length):
    """vllm/utils.py:171, 220-234 with padded_length = valid_length."""
    expected = min(max(valid_length - 1, 0), valid_length)
    k = routed.shape[2]
    full = np.broadcast_to(np.arange(k, dtype=routed.dtype).reshape(1, 1, -1), (valid_length, routed.shape[1], k)).copy()
    n = min(routed.shape[0], expected)
    full[:n] = routed[:n]
    full[n:expected] = -1
    return full


def gym_check(routed, prompt_tokens, generation_tokens):
    """nemo_gym.py:869-876."""
    if routed.shape[0] < prompt_tokens + generation_tokens:
        raise ValueError("routed_experts has fewer rows than tokens")

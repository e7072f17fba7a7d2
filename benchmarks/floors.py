"""What the hardware cannot beat: FLOPs and bytes moved by an encoder pass and a decode step of
the model's shape, over the machine's measured matmul rate and bandwidth. The count is the
model's essential work (a banded window of 2h+1 keys, cross K/V computed once per request),
so every implementation is measured against the same floor."""


def encoder_work(model: dict, length: int, weight_bytes: int, dtype_bytes: int) -> dict:
    d, f, layers = model["d_model"], model["encoder_ffn_dim"], model["encoder_layers"]
    flops = 0
    for window in model["attention_window"]:
        keys = min(window + 1, length)  # one-sided window/2 on each side, and the token itself
        flops += 2 * length * (4 * d * d + 2 * d * f) + 2 * 2 * length * keys * d
    flops += model["decoder_layers"] * 2 * 2 * length * d * d  # cross K/V projections
    outputs = (1 + 2 * model["decoder_layers"]) * length * d * dtype_bytes
    return {"flops": flops, "bytes": weight_bytes + outputs, "layers": layers}


def decode_step_work(
    model: dict, rows: int, requests: int, length: int, past: int, weight_bytes: int,
    dtype_bytes: int,
) -> dict:  # fmt: skip
    """One step for `rows` rows of `requests` requests with `length` input tokens each and a
    self-attention past of `past` tokens; `weight_bytes`: the decoder graph's weights."""
    d, f, v, layers = (
        model["d_model"],
        model["decoder_ffn_dim"],
        model["vocab_size"],
        model["decoder_layers"],
    )
    per_layer = 2 * rows * (6 * d * d + 2 * d * f) + 2 * 2 * rows * (past + 1 + length) * d
    flops = layers * per_layer + 2 * rows * d * v
    kv = layers * 2 * d * dtype_bytes * (requests * length + rows * past)
    return {"flops": flops, "bytes": weight_bytes + kv}


def floor_seconds(work: dict, rates: dict) -> dict:
    compute = work["flops"] / rates["matmul_flops"]
    memory = work["bytes"] / rates["copy_bytes_per_s"]
    return {
        "compute_s": compute,
        "memory_s": memory,
        "floor_s": max(compute, memory),
        "bound": "compute" if compute >= memory else "memory",
    }

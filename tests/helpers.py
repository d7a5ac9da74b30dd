"""Small helpers shared by test modules (imported as `helpers`: tests/ is on sys.path)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest


def stop_server(proc: subprocess.Popen, *, group: bool, timeout: float) -> None:
    """SIGTERM a server started with `start_new_session=True` (its whole process group
    when `group`, else the process, which then stops its own children); SIGKILL the
    group if it is not gone within `timeout` seconds."""
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_http_ok(
    request: str | urllib.request.Request,
    proc: subprocess.Popen,
    log: Path,
    what: str,
    timeout: float = 90,
    every: float = 0.3,
) -> None:
    """Poll `request` until it answers 200; fail with the log's tail if `proc` exits or
    `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if urllib.request.urlopen(request, timeout=1).status == 200:
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(every)


def bits_equal(a, b) -> bool:
    """Same dtype, shape and bytes (NaN-safe, unlike torch.equal)."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    return torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)
    )


def demo_models(tmp_path_factory, arch: str = "qwen2") -> tuple[Path, Path]:
    """(policy dir, reward dir) of the offline demo models of `arch`
    (`selfplay.models.demo`), written once per call under a fresh tmp dir; load them with
    `load_policy` / `load_classifier`. Use from a module-scoped fixture:

        @pytest.fixture(scope="module")
        def demo(tmp_path_factory):
            return demo_models(tmp_path_factory, "llama")
    """
    from selfplay.models.demo import write_chat_policy, write_reward_model

    root = tmp_path_factory.mktemp(f"demo_{arch}")
    return (
        write_chat_policy(root / "policy", arch=arch),
        write_reward_model(root / "reward", arch=arch),
    )


def oracle_gap(P, pi) -> float:
    """The duality gap 2·max_y (Pπ)_y − 1, in plain numpy."""
    return float(2.0 * np.max(P @ pi) - 1.0)


def oracle_regularized_gap(P, pi, beta: float, mu) -> float:
    """2·[β·log Σ_y μ(y)·exp((Pπ)_y/β) + β·KL(π‖μ)] − 1, in plain numpy."""
    z = np.log(mu) + (P @ pi) / beta
    lse = z.max() + np.log(np.exp(z - z.max()).sum())
    kl = float(np.sum(pi * (np.log(pi) - np.log(mu))))
    return float(2.0 * (beta * lse + beta * kl) - 1.0)


#: Per-comparison failure probability of `wide_band`: 1e-7, so a test with up to ten
#: such comparisons fails by chance with probability < 1e-6 (a union bound).
BAND_FAIL = 1e-7


def wide_band(est: float, low: float, high: float, units: int, level: float = 0.95):
    """(z, se): the half-width in standard errors and the standard error of a reported
    t-interval `[low, high]` around `est` over `units` clustering units, widened so a
    calibrated estimate misses the truth with probability `BAND_FAIL`.

    se is recovered from the interval: half-width / t_{U−1, (1+level)/2} (the larger
    side: clipping to [0, 1] only shortens one side). z is the t_{U−1} quantile at
    1 − BAND_FAIL/2 (U = 64: 6.0; U = 32: 6.9; normal: 5.3). The studentized mean of
    U bounded unit means is t_{U−1} up to skew; 1e-7 keeps a factor-10 margin for it
    below the 1e-6 a test may fail with. Seeds do not enter: any random stream."""
    from scipy.stats import t

    half = max(est - low, high - est)
    se = half / t.ppf(0.5 + level / 2, units - 1)
    return float(t.isf(BAND_FAIL / 2, units - 1)), float(se)


def within_band(est: float, low: float, high: float, units: int, exact: float) -> bool:
    """|est − exact| ≤ z·se (`wide_band`): the exact value is inside the widened band."""
    z, se = wide_band(est, low, high, units)
    return abs(est - exact) <= z * se


def bernstein_half(var: float, spread: float, n: int, fail: float = BAND_FAIL) -> float:
    """ε with P(|mean of n iid X − E X| ≥ ε) ≤ `fail` by Bernstein's inequality,
    2·exp(−n·ε² / (2·var + 2·spread·ε/3)) = fail, for |X − E X| ≤ spread and Var X =
    var known exactly (an oracle's, not estimated): a bound, no normal approximation."""
    L = float(np.log(2 / fail))
    b = 2 * spread * L / 3
    return (b + np.sqrt(b * b + 8 * n * L * var)) / (2 * n)


GGUF_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_gguf(path: Path, *, hidden: int = 16, seed: int = 0) -> dict:
    """Write a one-layer llama `.gguf` (float32 tensors, byte-level BPE over the 256 byte
    symbols plus two merges and <|endoftext|> (pad), <|im_start|> (bos), <|im_end|> (eos),
    a ChatML template) with the `gguf` package; returns its tensors by GGUF name."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    rng = np.random.default_rng(seed)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = [*bytes_to_unicode().values(), "he", "ll", *specials]
    v, h = len(tokens), hidden
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_embedding_length(h)
    w.add_block_count(1)
    w.add_feed_forward_length(2 * h)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(v)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (v - 3) + [3] * 3)
    w.add_token_merges(["h e", "l l"])
    w.add_pad_token_id(v - 3)
    w.add_bos_token_id(v - 2)
    w.add_eos_token_id(v - 1)
    w.add_chat_template(GGUF_CHAT_TEMPLATE)

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    t = {"token_embd.weight": rand(v, h), "output_norm.weight": np.ones(h, np.float32)}
    t["output.weight"] = rand(v, h)
    for n in ("attn_q", "attn_k", "attn_v", "attn_output"):
        t[f"blk.0.{n}.weight"] = rand(h, h)
    t["blk.0.attn_norm.weight"] = t["blk.0.ffn_norm.weight"] = np.ones(h, np.float32)
    t["blk.0.ffn_gate.weight"], t["blk.0.ffn_up.weight"] = rand(2 * h, h), rand(2 * h, h)
    t["blk.0.ffn_down.weight"] = rand(h, 2 * h)
    for name, x in t.items():
        w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return t

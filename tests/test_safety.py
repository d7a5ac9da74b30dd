"""Safe defaults: no unpickling, no remote code, config files are data.

Oracles: the in-memory model that was saved (its logits on a fixed input), marker
files that an executed payload would create, and known-bad source snippets the
static scanner must flag.
"""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import pytest
import torch

from selfplay.algos import NAMES as ALGO_NAMES
from selfplay.algos import get as get_algo
from selfplay.config import load_config
from selfplay.errors import InputError
from selfplay.judges.factory import JUDGE_KINDS, JudgeSpec, make_judge
from selfplay.models.load import load_classifier, load_policy
from selfplay.models.tiny import ModelSpec
from selfplay.rollout import BACKENDS, make_backend

SPEC = ModelSpec(
    words=("rock", "paper", "scissors", "choose"),
    hidden=16,
    layers=1,
    heads=2,
    seed=3,
    init_std=0.5,
)
PACKAGE = Path(__file__).resolve().parents[1] / "selfplay"


class _Payload:
    """Unpickling this creates `path` (an executed payload leaves a trace)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


# ---- (a) model loading -----------------------------------------------------------------


def _fixed_input(tok) -> dict[str, torch.Tensor]:
    return tok(["choose rock paper", "choose scissors"], return_tensors="pt", padding=True)


def test_safetensors_policy_loads_with_saved_logits(tmp_path):
    model, tok = SPEC.causal_lm(), SPEC.tokenizer()
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.safetensors"))
    loaded, ltok = load_policy(str(tmp_path))
    x = _fixed_input(tok)
    assert torch.equal(_fixed_input(ltok)["input_ids"], x["input_ids"])
    with torch.no_grad():
        want, got = model(**x).logits, loaded(**x).logits
    assert want.abs().max() > 0.1  # a non-trivial model, so equality means the weights came back
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_safetensors_classifier_loads_with_saved_logits(tmp_path):
    model, tok = SPEC.sequence_classifier(), SPEC.tokenizer()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, _ = load_classifier(str(tmp_path))
    x = _fixed_input(tok)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, model(**x).logits, rtol=0, atol=0)


def _pickle_only_dir(path: Path, marker: Path) -> Path:
    """config.json + tokenizer + a pytorch_model.bin whose unpickling would touch `marker`."""
    model, tok = SPEC.causal_lm(), SPEC.tokenizer()
    model.config.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    return path


@pytest.mark.parametrize("loader", [load_policy, load_classifier])
def test_pickle_only_dir_is_refused(tmp_path, loader):
    marker = tmp_path / "unpickled"
    d = _pickle_only_dir(tmp_path / "ckpt", marker)
    with pytest.raises(InputError) as e:
        loader(str(d))
    assert _one_line(e) == (
        f"no safetensors weights in {d} (pickle .bin checkpoints are not loaded)"
    )
    assert not marker.exists()


def test_real_bin_checkpoint_is_refused(tmp_path):
    # A genuine torch.save checkpoint (not a payload) is refused just the same.
    model, tok = SPEC.causal_lm(), SPEC.tokenizer()
    model.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(InputError, match="no safetensors weights in"):
        load_policy(str(tmp_path))


def test_remote_code_is_not_run(tmp_path):
    marker = tmp_path / "imported"
    d = tmp_path / "ckpt"
    SPEC.causal_lm().save_pretrained(d)
    SPEC.tokenizer().save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(
        model_type="evil",
        auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"},
    )
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    with pytest.raises(InputError) as e:
        load_policy(str(d))
    _one_line(e)
    assert not marker.exists()


def test_vllm_backend_refuses_unsafe_options(tmp_path):
    # These checks run before vllm is imported, so they hold on machines without it.
    d = _pickle_only_dir(tmp_path / "ckpt", tmp_path / "unpickled")
    with pytest.raises(InputError, match="no safetensors weights in"):
        make_backend("vllm", str(d))
    for bad in ({"trust_remote_code": True}, {"load_format": "pt"}):
        with pytest.raises(InputError) as e:
            make_backend("vllm", str(d), **bad)
        assert next(iter(bad)) in _one_line(e)
    assert not (tmp_path / "unpickled").exists()


# ---- (b) static scan of the package ----------------------------------------------------

UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}
BUILTINS = {"eval", "exec", "__import__", "compile"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_const(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


#: The modules that may import by name: cli.py its own commands; judges/function.py the
#: one file or module a user names in judge.function, which is that setting's purpose.
IMPORTERS = ("selfplay/cli.py", "selfplay/judges/function.py")


def _bad_call(call: ast.Call, rel: str) -> str | None:
    name = _dotted(call.func)
    head, _, last = name.rpartition(".")
    if name in BUILTINS:
        return f"{name}()"
    if head in UNPICKLERS or name in (
        "torch.load",
        "yaml.load",
        "yaml.unsafe_load",
        "yaml.full_load",
        "yaml.load_all",
    ):
        return f"{name}()"
    if name in ("np.load", "numpy.load") and not _is_const(_kw(call, "allow_pickle"), False):
        return f"{name}() without allow_pickle=False"
    if last == "import_module" and rel not in IMPORTERS:
        return "import_module()"
    trc = _kw(call, "trust_remote_code")
    if trc is not None and not _is_const(trc, False):
        return "trust_remote_code not False"
    if _is_const(_kw(call, "safe_serialization"), False):
        return "safe_serialization=False"
    if last == "from_pretrained":
        if rel != "selfplay/models/load.py" and "Tokenizer" not in head:
            # Everything loads only through selfplay.models.load (tokenizers excepted).
            return f"{name}() outside selfplay/models/load.py"
        if rel == "selfplay/models/load.py" and not _is_const(trc, False):
            return f"{name}() without trust_remote_code=False"
        weightless = "Tokenizer" in head or head.endswith("Config")  # no tensors to unpickle
        # a .gguf file (`gguf_file=`) is llama.cpp's plain tensor format: nothing to unpickle
        weightless = weightless or _kw(call, "gguf_file") is not None
        if not weightless and not _is_const(_kw(call, "use_safetensors"), True):
            return f"{name}() without use_safetensors=True"
    return None


def _bad_import(node: ast.AST, rel: str) -> str | None:
    if isinstance(node, ast.Import):
        mods = [a.name.split(".")[0] for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.module == "importlib.metadata":
            return None  # an installed package's metadata and file list: imports nothing
        if node.module == "importlib.util" and [a.name for a in node.names] == ["find_spec"]:
            return None  # finding whether a package is installed imports nothing
        mods = [(node.module or "").split(".")[0]]
        if mods[0] in ("torch", "numpy", "yaml") and any(
            a.name in ("load", "unsafe_load", "full_load") for a in node.names
        ):
            return f"from {node.module} import load"
    else:
        return None
    for m in mods:
        if m in UNPICKLERS:
            return f"import {m}"
        if m == "importlib" and rel not in IMPORTERS:
            return "import importlib"
    return None


def scan_source(src: str, rel: str) -> list[str]:
    """Findings `rel:line: what` for forbidden constructs (code only; comments and strings don't count)."""
    out = []
    for node in ast.walk(ast.parse(src)):
        what = _bad_call(node, rel) if isinstance(node, ast.Call) else _bad_import(node, rel)
        if what:
            out.append(f"{rel}:{node.lineno}: {what}")
    return out


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle\npickle.loads(b'')",
        "import torch\ntorch.load('x')",
        "np.load('x.npy')",
        "np.load('x.npy', allow_pickle=True)",
        "eval('1')",
        "exec('1')",
        "__import__('os')",
        "import importlib\nimportlib.import_module('os')",
        "from importlib import import_module",
        "M.from_pretrained('x', trust_remote_code=True)",
        "yaml.load(s, Loader=yaml.Loader)",
        "AutoModelForCausalLM.from_pretrained('x')",
        "m.save_pretrained(d, safe_serialization=False)",
        "import dill",
        "from torch import load",
    ],
)
def test_scanner_flags_forbidden_code(snippet):
    assert scan_source(snippet, "selfplay/x.py")


@pytest.mark.parametrize(
    "snippet",
    [
        '"""We never call eval() or pickle.load here; torch.load is refused."""',
        "# importlib.import_module(name); exec(code); trust_remote_code=True",
        "np.load(p, allow_pickle=False)",
        "AutoTokenizer.from_pretrained(name)",
        "x = 'yaml.load(s)'",
        "re.compile('a+')",
        "model.eval()",
    ],
)
def test_scanner_ignores_comments_strings_and_safe_calls(snippet):
    assert scan_source(snippet, "selfplay/x.py") == []


def test_scanner_load_py_rules():
    ok = (
        "AutoModel.from_pretrained(n, use_safetensors=True, trust_remote_code=False)\n"
        "AutoTokenizer.from_pretrained(n, trust_remote_code=False)\n"
    )
    assert scan_source(ok, "selfplay/models/load.py") == []
    assert scan_source("AutoTokenizer.from_pretrained(n)", "selfplay/models/load.py")
    assert scan_source("importlib.import_module(m)", "selfplay/cli.py") == []
    assert scan_source("from importlib.util import find_spec", "selfplay/x.py") == []
    assert scan_source("from importlib.util import find_spec, module_from_spec", "selfplay/x.py")


def test_package_has_no_forbidden_calls():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20  # the scan really walked the package
    findings = []
    for f in files:
        rel = f.relative_to(PACKAGE.parent).as_posix()
        findings += scan_source(f.read_text(), rel)
    assert findings == []


# ---- (c) config files are data ---------------------------------------------------------


def test_yaml_python_tag_is_rejected_and_not_run(tmp_path):
    marker = tmp_path / "ran"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f'seed: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(InputError) as e:
        load_config(cfg)
    assert "not valid YAML" in _one_line(e)
    with pytest.raises(InputError):
        load_config(None, [f'seed=!!python/object/apply:os.system ["touch {marker}"]'])
    assert not marker.exists()


# ---- (d) names resolve through explicit tables ------------------------------------------


def test_unknown_names_list_the_allowed_ones():
    with pytest.raises(InputError) as e:
        make_judge(JudgeSpec(kind="os.system", batch_size=1, model="x"))
    assert all(k in _one_line(e) for k in ("game", "reward", "pairwise", "llm"))
    assert set(JUDGE_KINDS) == {"game", "reward", "pairwise", "llm", "function"}
    with pytest.raises(InputError) as e:
        make_backend("selfplay.rollout.hf:HFBackend", SPEC)
    assert all(k in _one_line(e) for k in ("hf", "vllm"))
    assert set(BACKENDS) == {"hf", "vllm"}
    with pytest.raises(InputError) as e:
        get_algo("os.system")
    assert all(n in _one_line(e) for n in ALGO_NAMES)
    for key, bad in (
        ("task.kind", "os.system"),
        ("rollout.backend", "os.system"),
        ("algo.loss", "os.system"),
        ("algo.name", "os.system"),
    ):
        with pytest.raises(InputError) as e:
            load_config(None, [f"{key}={bad}"])
        assert key in _one_line(e)

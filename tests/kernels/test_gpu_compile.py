"""Compile every Triton kernel for sm_80 and sm_90 on a machine without a GPU.

The other kernel tests run the kernels under the Triton interpreter, which never compiles them:
a kernel may still fail to build, overflow shared memory or miss the tensor cores on a GPU.
Triton compiles ahead of time for a target it does not have, so this test does, for the launches
the dispatcher makes. They are captured from the real launchers, called on meta tensors with
each kernel swapped for a recorder and the interpreter flag off (so the GPU heuristics, launch
options and committed tuned tables apply), compiled for ``GPUTarget("cuda", 80)`` and
``("cuda", 90)``, and checked:

* it compiles to a cubin;
* its shared memory fits one block of the target (163 KB on sm_80, 227 KB on sm_90);
* its dots take the operand types the kernel means to use, every fp16/bf16 dot runs on the
  tensor cores (an ``nvidia_mma`` encoding in the TTGIR; ``mma.sync`` on sm_80, ``wgmma`` on
  sm_90 where the tile has >= 64 rows, on those types in the PTX), and fp32 dots run on TF32
  tensor cores exactly when torch allows TF32 (and in fp16 decode's p.v, by design).

Which launches: every kernel x input dtype (``tf32`` = fp32 inputs with
``torch.backends.cuda.matmul.allow_tf32``) x config the heuristics or a committed tuned table
choose, each at the largest head dim that reaches it (the most shared memory), with flags in
their superset form (causal + padding mask + query index, RECOMPUTE for the decode chunks:
those variants hold every loop and load of the others). Long inputs reach the full-size tiles,
compiled for every dtype. The smaller tiles of short inputs (BLOCK_M clamped to 16/32/64) and
the decode tile of a 64:1 MQA group are compiled in bf16 for sm_90, where tiles under 64 rows
switch from wgmma to mma.sync; fp16 has the same shapes and bytes, and on sm_80 they are the
full tile's mma.sync code with fewer rows. ``LEANVISION_COMPILE_ALL=1`` compiles the whole
product instead: every dtype, shape and head dim on both targets (several minutes).

Compilation runs in child processes without ``TRITON_INTERPRET``: in a process that imported
triton with the interpreter on, triton.language's own ``@jit`` helpers (``tl.sum``, ...) are
interpreter objects, and the code generator reads the flag while it compiles.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from triton.runtime.jit import KernelInterface  # noqa: E402

from leanvision.kernels import configs  # noqa: E402

# arch, shared memory one block may use (bytes): A100 163 KB, H100 227 KB.
TARGETS = {"sm80": (80, 163 * 1024), "sm90": (90, 227 * 1024)}
# Where the tiles of short inputs are compiled (see the module docstring).
SHORT_SHAPE_TARGETS = ("sm90",)
# The kernel folders with a triton.py, and how each launched kernel is named in test ids.
OPS = ("attention", "scores", "decode", "linear_attention")
KERNELS = {
    ("attention", "_attention_kernel"): "attention",
    ("scores", "_scores_kernel"): "scores",
    ("decode", "_split_kernel"): "decode.split",
    ("decode", "_combine_kernel"): "decode.combine",
    ("linear_attention", "_state_kernel"): "linear.state",
    ("linear_attention", "_apply_kernel"): "linear.apply",
}
# label -> (input dtype, torch.backends.cuda.matmul.allow_tf32)
DTYPES = {
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, False),
    "fp32": (torch.float32, False),
    "tf32": (torch.float32, True),
}
TRITON_TYPES = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.uint8: "u8",
    torch.int32: "i32",
    torch.int64: "i64",
}
# Head dims: the largest of each branch of the heuristics (D <= 64, <= 128, <= 256 for the
# softmax kernels; BLOCK_D 16, 32, 64 for linear attention, whose head dims stop at 64).
HEAD_DIMS = {"softmax": (64, 128, 256), "linear": (16, 32, 64)}
LONG_ROWS, SHORT_ROWS = (1024,), (16, 32, 64)  # short: BLOCK_M clamps to 16, 32, 64
GQA_HEADS, MQA_HEADS = (8,), (64,)  # query heads per kv head in decode: BLOCK_G 16 and 64
KEYS = 1024
COMPILE_ALL = os.environ.get("LEANVISION_COMPILE_ALL", "0") == "1"


@dataclass(frozen=True)
class Launch:
    """One kernel launch as Triton specialises it: what a compile needs, JSON-ready."""

    op: str
    module: str
    kernel: str
    dtype: str
    signature: tuple[tuple[str, str], ...]  # every parameter -> Triton type or "constexpr"
    constexprs: tuple[tuple[str, object], ...]
    divisible: tuple[str, ...]  # parameters Triton marks divisible by 16
    options: tuple[tuple[str, int], ...]  # num_warps, num_stages

    @property
    def const(self) -> dict:
        return dict(self.constexprs)

    @property
    def name(self) -> str:
        const, opts = self.const, dict(self.options)
        parts = [self.op, self.dtype]
        parts += [f"{s}{const[k]}" for k, s in (("BLOCK_D", "D"), ("BLOCK_G", "G")) if k in const]
        tile = "x".join(str(const[k]) for k in ("BLOCK_M", "BLOCK_N") if k in const)
        parts += [tile] if tile else []
        parts += [f"w{opts['num_warps']}s{opts['num_stages']}"] if opts else []
        parts += [flag.lower() for flag in ("CAUSAL", "RECOMPUTE") if const.get(flag)]
        return "-".join(parts)


# --- capturing launches (this process) ------------------------------------------------------


def _kernel_module(op: str):
    return importlib.import_module(f"leanvision.kernels.ops.{op}.triton")


def _specialise(value: object) -> tuple[str, bool]:
    """(Triton type, divisible by 16) of a runtime argument, as Triton's launcher decides it.

    Tensors are taken as 16-byte aligned (torch's allocations are); ints equal to 1 become
    constants (handled by the caller).
    """
    if isinstance(value, torch.Tensor):
        return "*" + TRITON_TYPES[value.dtype], True
    if isinstance(value, bool):
        return "u1", False
    if isinstance(value, int):
        return ("i32" if -(2**31) <= value < 2**31 else "i64"), value % 16 == 0
    if isinstance(value, float):
        return "fp32", False
    raise TypeError(f"cannot specialise a kernel argument of type {type(value).__name__}")


class _Recorder:
    """Stands in for a @triton.jit kernel: ``kernel[grid](...)`` records the launch."""

    def __init__(self, op: str, kernel_name: str, kernel, dtype: str, sink: list[Launch]):
        self.op, self.kernel_name, self.fn = op, kernel_name, kernel.fn
        self.dtype, self.sink = dtype, sink

    def __getitem__(self, grid):
        return self._launch

    def _launch(self, *args, **kwargs):
        assert (self.op, self.kernel_name) in KERNELS, f"add {self.kernel_name} to KERNELS"
        params = inspect.signature(self.fn).parameters
        options = {k: kwargs.pop(k) for k in list(kwargs) if k not in params}
        bound = inspect.signature(self.fn).bind(*args, **kwargs)
        signature, constexprs, divisible = [], {}, []
        for name, value in bound.arguments.items():
            if "constexpr" in str(params[name].annotation) or (type(value) is int and value == 1):
                signature.append((name, "constexpr"))
                constexprs[name] = value
                continue
            kind, aligned = _specialise(value)
            signature.append((name, kind))
            if aligned:
                divisible.append(name)
        self.sink.append(
            Launch(
                op=KERNELS[(self.op, self.kernel_name)],
                module=_kernel_module(self.op).__name__,
                kernel=self.kernel_name,
                dtype=self.dtype,
                signature=tuple(signature),
                constexprs=tuple(sorted(constexprs.items())),
                divisible=tuple(divisible),
                options=tuple(sorted(options.items())),
            )
        )


@contextlib.contextmanager
def _launching_as_on_a_gpu(dtype_label: str, sink: list[Launch], tuned: dict | None):
    """Launchers see no interpreter, the label's TF32 flag and ``tuned`` as this GPU's table;
    their kernels are recorders. Everything is restored on exit."""
    saved_env = os.environ.get("TRITON_INTERPRET")
    saved_tf32 = torch.backends.cuda.matmul.allow_tf32
    patched: list[tuple[object, str, object]] = []

    def patch(owner, name, value):
        patched.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def tuned_config(op, key, device):
        entry = (tuned or {}).get(op, {}).get(key)
        return dict(entry) if entry else None

    # Imported before the flag goes off: a kernel module first imported without it would keep
    # compiled kernels, and every later interpreted test in this process would fail.
    modules = {op: _kernel_module(op) for op in OPS}
    try:
        os.environ["TRITON_INTERPRET"] = "0"
        torch.backends.cuda.matmul.allow_tf32 = DTYPES[dtype_label][1]
        patch(configs, "tuned_config", tuned_config)
        for op, module in modules.items():
            if hasattr(module, "tuned_config"):
                patch(module, "tuned_config", tuned_config)
            # Every @triton.jit function: a kernel launched but missing from KERNELS fails loudly.
            for name, value in vars(module).copy().items():
                if isinstance(value, KernelInterface):
                    patch(module, name, _Recorder(op, name, value, dtype_label, sink))
        yield
    finally:
        for owner, name, value in reversed(patched):
            setattr(owner, name, value)
        torch.backends.cuda.matmul.allow_tf32 = saved_tf32
        if saved_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved_env


def _meta(*shape, dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def _call_launchers(dtype, head_dims: dict, query_rows, q_heads_per_kv) -> None:
    """Run every launcher on meta tensors, for shapes that reach each config."""
    attention, scores = _kernel_module("attention"), _kernel_module("scores")
    decode, linear = _kernel_module("decode"), _kernel_module("linear_attention")
    pad = _meta(2, KEYS, dtype=torch.bool)
    for head_dim in head_dims["softmax"]:
        k = _meta(2, 2, KEYS, head_dim, dtype=dtype)
        for rows in query_rows:
            q = _meta(2, 4, rows, head_dim, dtype=dtype)
            for causal in (False, True):  # a tuned table may hold either
                attention.attention_triton(q, k, k, causal=causal, key_padding_mask=pad)
            index = _meta(2, rows, dtype=torch.int64)
            q = _meta(2, 4, KEYS, head_dim, dtype=dtype)
            scores.attention_scores_triton(q, k, None, True, index, pad)
        lengths = _meta(2, dtype=torch.int32)
        cache = _meta(2, 1, 4096, head_dim, dtype=dtype)
        for q_heads in q_heads_per_kv:
            q = _meta(2, q_heads, 1, head_dim, dtype=dtype)
            decode.decode_attention_triton(q, cache, cache, lengths)
    for head_dim in head_dims["linear"]:
        q = _meta(2, 4, 4096, head_dim, dtype=dtype)
        linear.linear_attention_triton(q, q, q)


def committed_tables() -> dict[str, dict]:
    """The committed tuned tables, by file name: {op: {shape key: config}}."""
    return {
        path.name: json.loads(path.read_text()).get("configs", {})
        for path in sorted(Path(configs.TUNED_DIR).glob("*.json"))
    }


def _shapes_of(table: dict | None) -> tuple[dict, tuple[int, ...]]:
    """Head dims and query rows that reach the heuristics and a table's entries
    (its keys look like ``D128-bfloat16-causal-L4096``)."""
    keys = [key for entries in (table or {}).values() for key in entries]
    dims = {int(d) for key in keys for d in re.findall(r"^D(\d+)-", key)}
    lengths = {int(n) for key in keys for n in re.findall(r"-L(\d+)$", key)}
    head_dims = {
        "softmax": tuple(sorted(set(HEAD_DIMS["softmax"]) | dims)),
        "linear": tuple(sorted(set(HEAD_DIMS["linear"]) | {d for d in dims if d <= 64})),
    }
    return head_dims, tuple(sorted(set(LONG_ROWS) | lengths))


def _superset(launch: Launch) -> Launch:
    """The launch with its flags in superset form: causal attention, recomputing decode chunks."""
    const = launch.const
    if launch.kernel == "_attention_kernel":
        const["CAUSAL"] = True
    elif launch.kernel == "_split_kernel":
        const["RECOMPUTE"] = True
    return replace(launch, constexprs=tuple(sorted(const.items())))


def _largest_head_dim(launches: list[Launch]) -> list[Launch]:
    """One launch per (kernel, dtype, config): the one with the largest BLOCK_D."""
    best: dict[tuple, Launch] = {}
    for launch in launches:
        const = launch.const
        block_d = const.pop("BLOCK_D", 0)
        key = (launch.kernel, launch.dtype, tuple(sorted(const.items())), launch.options)
        if key not in best or best[key].const.get("BLOCK_D", 0) < block_d:
            best[key] = launch
    return list(best.values())


def reachable_launches(
    tables: dict[str, dict], short_shapes: bool = True, compile_all: bool = COMPILE_ALL
) -> list[Launch]:
    """The launches to compile (see the module docstring); ``short_shapes``: include the tiles
    of short inputs and MQA groups, in bf16 (in every dtype with ``compile_all``)."""
    found: list[Launch] = []
    for table in [None, *tables.values()]:
        head_dims, long_rows = _shapes_of(table)
        for label, (dtype, _) in DTYPES.items():
            rows, heads = long_rows, GQA_HEADS
            if short_shapes and (label == "bf16" or compile_all):
                rows, heads = rows + SHORT_ROWS, heads + MQA_HEADS
            sink: list[Launch] = []
            with _launching_as_on_a_gpu(label, sink, table):
                _call_launchers(dtype, head_dims, rows, heads)
            found += sink if compile_all else map(_superset, sink)
    # decode.combine has no dots: its tf32 launches are its fp32 ones.
    found = [x for x in found if not (x.dtype == "tf32" and x.kernel == "_combine_kernel")]
    found = list(dict.fromkeys(found))
    return found if compile_all else _largest_head_dim(found)


def _cases() -> list:
    tables, cases = committed_tables(), []
    for target in TARGETS:
        short_shapes = COMPILE_ALL or target in SHORT_SHAPE_TARGETS
        launches = sorted(reachable_launches(tables, short_shapes), key=lambda x: x.name)
        names = [launch.name for launch in launches]
        duplicates = {name for name in names if names.count(name) > 1}
        assert not duplicates, f"two launches share a test id: {sorted(duplicates)}"
        cases += [pytest.param(launch, target, id=f"{target}-{launch.name}") for launch in launches]
    return cases


CASES = _cases() if __name__ != "__main__" else []


# --- compiling (child processes, no interpreter) --------------------------------------------


def _dots(ttgir: str) -> list[dict]:
    """The dots of a TTGIR module: operand type, rows, and how they run (mma v2/v3 or fma)."""
    aliases = dict(re.findall(r"^(#\w+) = (.*)$", ttgir, flags=re.MULTILINE))
    found = []
    for line in ttgir.splitlines():
        match = re.search(r"= (?:tt\.dot|ttng\.warp_group_dot) .* : (.*)$", line)
        if not match:
            continue
        types, result = match.group(1).split("->")
        operand = re.search(r"<(?:\d+x)+(\w+)", types).group(1)
        rows = int(re.search(r"tensor<(\d+)x", result).group(1))
        encoding = re.search(r"tensor<[^,]+,\s*(#\w+)", result).group(1)
        version = re.search(r"nvidia_mma<\{versionMajor = (\d+)", aliases.get(encoding, ""))
        unit = f"mma.v{version[1]}" if version else "fma"
        found.append({"operand": operand, "rows": rows, "unit": unit})
    return found


def _compile(job: dict) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(job["module"]), job["kernel"])
    names = list(inspect.signature(fn.fn).parameters)
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in job["divisible"]}
    source = ASTSource(fn, dict(job["signature"]), constexprs=dict(job["constexprs"]), attrs=attrs)
    target = GPUTarget("cuda", job["arch"], 32)
    try:
        compiled = triton.compile(source, target=target, options=dict(job["options"]))
    except Exception as error:  # reported, with its message, by the test of this case
        return {"error": f"{type(error).__name__}: {error}"}
    ptx = compiled.asm["ptx"]
    return {
        "error": None,
        "cubin_bytes": len(compiled.asm.get("cubin", b"")),
        "shared": compiled.metadata.shared,
        "dots": _dots(compiled.asm["ttgir"]),
        "ptx_mma": sorted(set(re.findall(r"\b(?:wgmma\.mma_async|mma\.sync)[\w.]*", ptx))),
    }


def _compile_all(jobs: list[dict], workers: int) -> list[dict]:
    if workers <= 1 or len(jobs) <= 1:
        return [_compile(job) for job in jobs]
    import multiprocessing

    # Forked after the imports: workers start warm. Biggest tiles first, for an even finish.
    def cost(job):
        const = dict(job["constexprs"])
        return -const.get("BLOCK_M", const.get("BLOCK_G", 16)) * const.get("BLOCK_D", 16)

    order = sorted(range(len(jobs)), key=lambda i: cost(jobs[i]))
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        done = pool.map(_compile, [jobs[i] for i in order], chunksize=1)
    results = [None] * len(jobs)
    for i, result in zip(order, done, strict=True):
        results[i] = result
    return results


@pytest.fixture(scope="module")
def compiled(request) -> dict:
    """Compile, in a child process, the cases of this module that pytest selected."""
    wanted = []
    for item in request.session.items:
        spec = getattr(item, "callspec", None)
        if getattr(item, "module", None) is request.module and spec and "launch" in spec.params:
            wanted.append((spec.params["launch"], spec.params["target"]))
    wanted = list(dict.fromkeys(wanted))
    jobs = [{**asdict(launch), "arch": TARGETS[target][0]} for launch, target in wanted]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # compile only, whatever GPU this machine has
    env["TRITON_DISABLE_LINE_INFO"] = "1"  # no debug info: ~15% faster, same code
    workers = str(min(2, os.cpu_count() or 1))
    result = subprocess.run(
        [sys.executable, __file__, workers],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        env=env,
        timeout=None if COMPILE_ALL else 900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return dict(zip(wanted, json.loads(result.stdout.splitlines()[-1]), strict=True))


# --- checks ---------------------------------------------------------------------------------

SHORT_TYPES = {"bf16": "bf16", "fp16": "f16", "fp32": "f32", "tf32": "f32"}


def expected_operands(launch: Launch) -> set[str]:
    """Operand types of a kernel's dots: the input dtype, except where fp32 is by design."""
    if launch.kernel == "_combine_kernel":
        return set()
    if launch.kernel == "_apply_kernel":  # the key-value state is fp32
        return {"f32"}
    if launch.const.get("PV_FP32"):  # fp16 decode: p can exceed fp16's range, so p.v is fp32
        return {SHORT_TYPES[launch.dtype], "f32"}
    return {SHORT_TYPES[launch.dtype]}


def tf32_expected(launch: Launch) -> bool:
    """Whether fp32 dots should run as TF32: when torch allows it, and for fp16 decode's p.v
    (fp16 values are exact in TF32); otherwise they are IEEE fp32, as torch's matmuls are."""
    return launch.dtype == "tf32" or (launch.kernel == "_split_kernel" and launch.dtype == "fp16")


@pytest.mark.parametrize(("launch", "target"), CASES)
def test_compiles_for_gpu(compiled, launch: Launch, target: str):
    arch, shared_limit = TARGETS[target]
    result = compiled[(launch, target)]
    assert result["error"] is None, f"{launch.kernel} does not compile: {result['error']}"
    assert result["cubin_bytes"] > 0
    assert result["shared"] <= shared_limit, (
        f"needs {result['shared']} bytes of shared memory; sm_{arch} allows {shared_limit}"
    )
    dots = result["dots"]
    assert {dot["operand"] for dot in dots} == expected_operands(launch), dots
    for dot in dots:
        if dot["operand"] == "f32":
            tf32 = tf32_expected(launch)
            assert (dot["unit"] != "fma") == tf32, f"{dot} for {'tf32' if tf32 else 'ieee'} dots"
            continue
        # fp16/bf16: Hopper's wgmma takes tiles of >= 64 rows; smaller ones use mma.sync.
        unit = "mma.v3" if arch >= 90 and dot["rows"] >= 64 else "mma.v2"
        assert dot["unit"] == unit, dot
        instruction = "wgmma" if unit == "mma.v3" else "mma.sync"
        operand = dot["operand"]
        assert any(
            name.startswith(instruction) and f".{operand}.{operand}" in name
            for name in result["ptx_mma"]
        ), (instruction, operand, result["ptx_mma"])


def test_every_kernel_is_compiled_in_every_dtype():
    """The recorders saw every kernel of every kernel folder, in every dtype, for both targets;
    a new kernel folder must be added to OPS and to :func:`_call_launchers`."""
    folders = {path.parent.name for path in Path(configs.__file__).parent.glob("ops/*/triton.py")}
    assert folders == set(OPS), f"kernel folders {sorted(folders)} vs OPS {sorted(OPS)}"
    for target in TARGETS:
        seen = {(launch.op, launch.dtype) for launch, t in (c.values for c in CASES) if t == target}
        wanted = {(op, dtype) for op in KERNELS.values() for dtype in ("bf16", "fp16", "fp32")}
        assert wanted <= seen, sorted(wanted - seen)


def test_tuned_table_entries_are_compiled():
    """A committed table's entry reaches the compiled cases (none is committed yet)."""
    entry = {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 4}
    table = {"attention": {"D32-float16-full-L8192": entry}}
    launches = reachable_launches({"fake.json": table}, compile_all=False)
    tiles = {
        (launch.const["BLOCK_M"], launch.const["BLOCK_N"], launch.options, launch.const["CAUSAL"])
        for launch in launches
        if launch.op == "attention" and launch.dtype == "fp16" and launch.const["BLOCK_D"] == 32
    }
    assert tiles == {(64, 128, (("num_stages", 4), ("num_warps", 4)), True)}, tiles


if __name__ == "__main__":
    print(json.dumps(_compile_all(json.load(sys.stdin), int(sys.argv[1]))))

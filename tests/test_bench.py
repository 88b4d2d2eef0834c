"""The benchmark scripts build what they measure from the shipped files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from harness.sweep.space import load_space

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_bench_space_is_the_demo_space_with_pruning_off_and_its_own_cache(tmp_path: Path) -> None:
    bench = _load("sweep_prune")
    path = bench.write_space(tmp_path, "unpruned", {"type": "none"},
                             {"data.cache_dir": str(tmp_path / "cache"), "train.epochs": 2})
    space, demo = load_space(path), load_space(ROOT / "search_spaces/demo.yaml")
    assert space.study.pruner == {"type": "none"}
    assert [p.name for p in space.study.enqueue] == ["baseline.yaml", "recommended.yaml"]
    assert [p.name for p in space.params] == [p.name for p in demo.params]
    cfg = space.config_for(space.enqueue_params()[0])
    assert (cfg.train.epochs, cfg.data.cache_dir, cfg.data.input_size) == (2, tmp_path / "cache", 64)


def test_amp_bench_runs_the_readme_demo_command_twice_into_a_scratch_folder(tmp_path: Path) -> None:
    from harness.cli import build_parser
    from harness.config import load_config

    bench = _load("amp_cpu")
    overrides = bench.scratch_overrides(tmp_path, 1, [])
    commands = {amp: bench.train_command(tmp_path, amp, overrides) for amp in (False, True)}
    for amp, command in commands.items():
        args = build_parser().parse_args(command[command.index("train"):])
        assert [p.relative_to(ROOT).as_posix() for p in args.config] == ["baseline.yaml", "configs/demo.yaml"]
        assert args.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}" and args.run_dir.parent == tmp_path / "runs"
        cfg = load_config(args.config, args.overrides)
        assert cfg.train.amp is amp and cfg.train.epochs == 1
        assert cfg.train.output_dir == tmp_path / "runs" and cfg.data.cache_dir == tmp_path / "frame_cache"
    # Only train.amp differs between the two runs (and the folder each writes to).
    differ = [a for a, b in zip(commands[False], commands[True]) if a != b]
    assert differ == ["train.amp=false", str(tmp_path / "runs" / "fp32")]


def test_amp_bench_reads_the_cpu_model_and_bf16_flags(tmp_path: Path) -> None:
    bench = _load("amp_cpu")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                       "flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    line = bench.describe_cpu(cpuinfo)
    assert "Intel(R) Xeon(R) Platinum 8480+" in line
    assert "avx512_bf16 yes, amx_bf16 yes, amx_tile yes, amx_int8 no (native bf16: yes)" in line
    cpuinfo.write_text("model name\t: AMD EPYC 7B12\nflags\t\t: fpu sse avx2\n")
    assert "(native bf16: no)" in bench.describe_cpu(cpuinfo)

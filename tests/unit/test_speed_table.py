"""scripts/speed_table.py: README's speed table comes from the result files, row by row, between its markers."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "speed_table.py"
spec = importlib.util.spec_from_file_location("speed_table", SCRIPT)
speed_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(speed_table)

RUN = {"model": {"description": "builtin:sface"},
       "enroll": {"images_per_s": 61.5, "runtime": "onnx", "torch": {"images_per_s": 41.0}, "ratio_vs_torch": 1.5,
                  "baseline_images_per_s": 20.5, "ratio_vs_baseline": 3.0},
       "cli": {"gallery": {"faces": 1000}, "rounds": 5,
               "query": {"onnx_median_s": 0.91, "torch_median_s": 3.3, "torch_over_onnx": 3.63}}}
SCALE = {"queries": [
    {"index": "IVF2048,Flat", "gallery": 1_000_000, "device": "cpu", "batch": 1, "auto": True, "p50_ms": 4.05,
     "recall_at_1": 0.995, "baseline_p50_ms": 484.0, "speedup_vs_baseline": 119.5, "build_s": 58.7,
     "params": {"nprobe": 128, "nlist": 2048}},
    {"index": "Flat", "gallery": 1_000_000, "device": "cpu", "batch": 1, "auto": False, "p50_ms": 52.0,
     "recall_at_1": 1.0, "baseline_p50_ms": 484.0, "speedup_vs_baseline": 9.2, "build_s": 1.9,
     "index_bytes_per_face": 520.0, "index_bytes_vs_raw": 1.016}]}


def test_rows_carry_the_files_figures_and_name_their_source():
    rows = speed_table.rows(SCALE, "s.json", RUN, "r.json")
    text = speed_table.render(rows)
    assert "| 61.5 | 41.0 (torch) | 1.500x | `r.json` |" in text
    assert "0.91 s (ONNX Runtime) | 3.30 s (torch) | 3.63x" in text
    assert "1M faces fitted to ?, one probe" in text
    assert "IVF2048,Flat, nprobe 128 chosen at build; built in 58.7 s" in text and "4.05 ms, recall@1 0.995" in text
    assert "| 520 B | 512 B raw vectors | 1.016x | `s.json` |" in text
    assert "nlist" not in text


def test_missing_figures_are_left_out_and_the_readme_is_written_between_markers(tmp_path):
    assert speed_table.rows(None, "s.json", None, "r.json") == []
    two = speed_table.rows([None, SCALE], ["a.json", "s.json"], None, "r.json")
    assert two and all(r[4] == "s.json" for r in two)
    (tmp_path / "s.json").write_text(json.dumps(SCALE))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{speed_table.BEGIN}\nold table\n{speed_table.END}\nafter\n")
    args = ["--scale", str(tmp_path / "s.json"), "--run", str(tmp_path / "none.json"), "--cli", str(tmp_path / "none.json"),
            "--readme", str(readme)]
    assert speed_table.main(args + ["--check"]) == 1  # the old table is not what the files give
    assert speed_table.main(args) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\nafter\n") and "old table" not in text
    assert "4.05 ms" in text and "ONNX" not in text
    assert speed_table.main(args + ["--check"]) == 0
    readme.write_text("no markers")
    assert speed_table.main(args) == 2


def test_one_make_bench_result_gives_every_row_and_print_writes_nothing(tmp_path):
    bench = tmp_path / "scale-cpu-2core.json"
    bench.write_text(json.dumps({**RUN, **SCALE}))
    readme = tmp_path / "README.md"
    readme.write_text(f"{speed_table.BEGIN}\nold table\n{speed_table.END}\n")
    args = ["--bench", str(bench), "--readme", str(readme)]
    assert speed_table.main(args + ["--print"]) == 0
    assert "old table" in readme.read_text()  # --print wrote nothing
    assert speed_table.main(args) == 0
    text = readme.read_text()
    src = f"`{bench}`"
    lines = [x for x in text.splitlines() if x.startswith("| ") and "---" not in x][1:]
    assert len(lines) == 5 and all(x.endswith(f"| {src} |") for x in lines)  # enroll x2, CLI, 1M probe, memory
    assert "0.91 s (ONNX Runtime)" in text and "61.5" in text and "4.05 ms" in text
    assert "484.0 ms (numpy; exact Flat 52.0 ms)" in text  # the exact index of the same run beside numpy
    assert speed_table.main(["--bench", str(tmp_path / "none.json"), "--readme", str(readme)]) == 2


def test_with_no_sources_named_every_row_comes_from_make_bench_s_result(capsys):
    assert speed_table.main(["--print"]) == 0
    rows = [x for x in capsys.readouterr().out.splitlines() if x.startswith("| ") and "---" not in x][1:]
    assert rows and all(x.endswith("| `benchmarks/results/scale-cpu-2core.json` |") for x in rows)

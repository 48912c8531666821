"""benchmarks/run.py: make bench's closing ISSUE 20 table judges each goal from the run's own figures."""

from benchmarks import run

Q = [
    {"label": "Flat (exact)", "index": "Flat", "gallery": 1_000_000, "device": "cpu", "batch": 1, "auto": False,
     "p50_ms": 23.4, "recall_at_1": 1.0, "baseline_p50_ms": 288.0, "speedup_vs_baseline": 12.3},
    {"label": "auto: IVF2048,PQ64x4fs,RFlat nprobe=448 refine=128", "index": "IVF2048,PQ64x4fs,RFlat",
     "gallery": 1_000_000, "device": "cpu", "batch": 1, "auto": True, "p50_ms": 1.92, "recall_at_1": 0.997,
     "baseline_p50_ms": 288.0, "speedup_vs_baseline": 150.0, "build_s": 64.7},
]
RES = {"queries": Q, "gpu": {"skipped": "no CUDA device visible to torch on this machine"},
       "scale": [{"gallery": 1_000_000, "auto": {"rebuild_index_s": 64.7},
                  "remove_identity": {"faces": 3, "seconds": 2.68, "in_place": True, "removed_absent_from_results": True}}],
       "enroll": {"images": 2000, "images_per_s": 24.9, "runtime": "onnx", "torch": {"images_per_s": 25.8},
                  "ratio_vs_torch": 0.96},
       "cli": {"gallery": {"faces": 1000}, "rounds": 5,
               "query": {"onnx_median_s": 0.87, "torch_median_s": 3.25, "torch_over_onnx": 3.74}}}


def test_each_goal_is_judged_against_its_limit_and_its_same_run_baseline():
    rows = run.issue20(RES)
    probe, removal, cli, enroll = rows[:4]
    assert probe["met"] is False and probe["measured"] == "1.92 ms, R@1 0.997"  # 1.92 ms is not under 1 ms
    assert probe["baseline"] == "exact Flat 23.40 ms" and probe["ratio"] == "12.2x"
    assert removal["met"] is True
    assert cli["met"] is True and "torch path 3.25 s" == cli["baseline"]
    assert enroll["met"] is False and enroll["ratio"] == "0.965x"
    gpu = [r for r in rows if r["goal"].startswith("GPU")]
    assert len(gpu) == 3 and all(r["met"] is None and "no CUDA device" in r["measured"] for r in gpu)


def test_a_ratio_is_judged_unrounded():
    # 47.86 / 31.96 = 1.4975: kept as 1.5 in the JSON, and not the 1.5x the goal asks for
    e = dict(RES["enroll"], torch={"images_per_s": 31.96},
             int8={"images_per_s": 47.86, "ratio_vs_torch": 1.5, "model_key": "m+int8-x"})
    rows = {r["goal"]: r for r in run.issue20(dict(RES, enroll=e))}
    int8 = rows["enroll, int8 copy (model quantize) vs torch fp32"]
    assert int8["met"] is False and int8["ratio"] == "1.497x"
    assert run._ratio(e["int8"], e) < 1.5  # what targets() judges by too
    e["int8"]["images_per_s"] = 48.0
    assert {r["goal"]: r for r in run.issue20(dict(RES, enroll=e))}[int8["goal"]]["met"] is True


def test_a_part_that_did_not_run_is_n_a_not_met_and_the_report_ends_with_the_table():
    fast = dict(RES, queries=[dict(Q[1], p50_ms=0.8)], cli={"skipped": "--no-cli"})
    rows = run.issue20(fast)
    assert rows[0]["met"] is True and rows[0]["baseline"].startswith("numpy")  # no exact row: numpy is the baseline
    assert rows[2]["met"] is None and "--no-cli" in rows[2]["measured"]
    assert run.issue20({"queries": []})[0]["measured"] == "not run (1M not in --sizes)"
    res = dict(queries=[], issue20=rows, total_s=1.0, targets=[], started="t", model={"description": "m", "key": "k"},
               machine={"cpu": "c", "cpu_cores": 2, "memory_gib": 1, "load_average_at_start": [0, 0, 0]})
    text = run.report(res)
    tail = text[text.index("ISSUE 20"):]
    assert "MET     1M faces, CPU, one probe" in tail and "n/a     `facesearch query`" in tail

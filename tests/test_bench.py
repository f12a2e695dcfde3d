from dreamrelation_core.bench import evaluator_benchmark, write_section


def test_write_section_replaces_in_place(tmp_path):
    doc = tmp_path / "benchmarks.md"
    write_section("a", "first", doc)
    write_section("b", "other", doc)
    write_section("a", "second", doc)
    text = doc.read_text()
    assert "second" in text and "first" not in text and text.index("second") < text.index("other")


def test_mini_evaluator_benchmark():
    result = evaluator_benchmark(clips_per_relation=2, progress=False)
    assert result["clips"] == 16 and result["relation_accuracy"] >= 0.95
    assert sum(sum(row.values()) for row in result["confusion"].values()) == 16


def test_mini_quality_benchmark_runs_every_method():
    from dreamrelation_core.synthrel import quality

    result = quality.benchmark(relations=("pushes",), exemplars=2, steps=2, prompts=1, seeds=(0, 1),
                               sample_steps=2, progress=False)
    assert set(result["methods"]) == {"dreamrelation", "direct_lora", "no_hmt", "no_rcl", "base"}
    for method in result["methods"].values():
        assert 0.0 <= method["relation_accuracy"] <= 1.0 and 0.0 <= method["leakage"] <= 1.0
        assert len(method["per_relation"]["pushes"]["per_seed"]) == 2
    assert "| dreamrelation |" in quality.markdown(result)

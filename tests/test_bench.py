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

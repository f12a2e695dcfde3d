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
    assert result["clips"] == 16 and result["relation_accuracy"] >= 0.95 and result["protocol"] == "v2"
    assert result["attributes_match"] >= 0.9
    assert sum(sum(row.values()) for row in result["confusion"].values()) == 16
    # two subjects in each of 9 frames of every clip, each read as its own texture (crisp renders)
    assert sum(sum(row.values()) for row in result["texture_confusion"].values()) == 16 * 2 * 9
    assert all(row.get(texture, 0) >= 0.9 * sum(row.values())
               for texture, row in result["texture_confusion"].items() if row)


def test_mini_quality_benchmark_runs_every_method(monkeypatch):
    from dreamrelation_core import trainer as trainer_module
    from dreamrelation_core.archs import ROLES
    from dreamrelation_core.synthrel import quality
    from dreamrelation_core.triplet import lora_layers

    runs, judged = [], []
    original_train, original_judge = trainer_module.RelationTrainer.train, quality.judge

    def train(self, *args, **kwargs):
        runs.append(self.config.train)
        return original_train(self, *args, **kwargs)

    def judge(base, *args):
        judged.append({role for _, layer in lora_layers(base.transformer) for role in layer.active_adapters})
        return original_judge(base, *args)

    monkeypatch.setattr(trainer_module.RelationTrainer, "train", train)
    monkeypatch.setattr(quality, "judge", judge)
    result = quality.benchmark(relations=("pushes",), exemplars=2, steps=2, prompts=1, seeds=(0, 1),
                               sample_steps=2, progress=False)
    assert list(result["methods"]) == list(quality.METHODS) == [
        "dreamrelation", "dreamrelation_all_roles", "direct_lora", "no_hmt", "no_rcl", "no_subject_loras", "base"]
    for method in result["methods"].values():
        assert 0.0 <= method["relation_accuracy"] <= 1.0 and 0.0 <= method["leakage"] <= 1.0
        assert len(method["per_relation"]["pushes"]["per_seed"]) == 2
    assert "| dreamrelation |" in quality.markdown(result)
    # One training run per distinct setting: the all-roles diagnostic reuses DreamRelation's triplet.
    assert len(runs) == 5 and [r.subject_loras for r in runs].count(False) == 1
    assert runs[0].hybrid_masks and runs[0].subject_loras                  # DreamRelation's own run comes first
    # Each method is judged with its inference roles active (none for the base).
    assert judged == [{"relation", "ffn"}, set(ROLES), set(ROLES), {"relation", "ffn"}, {"relation", "ffn"},
                      {"relation", "ffn"}, set()]

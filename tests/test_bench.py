import pytest

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
    from peft.tuners.tuners_utils import BaseTunerLayer

    runs, judged = [], []
    original_train, original_judge = trainer_module.RelationTrainer.train, quality.judge

    def train(self, *args, **kwargs):
        runs.append(self.config.train)
        return original_train(self, *args, **kwargs)

    def judge(base, *args):
        judged.append(({role for layer in base.transformer.modules() if isinstance(layer, BaseTunerLayer)
                        for role in layer.active_adapters}, args[-1]))
        return original_judge(base, *args)

    monkeypatch.setattr(trainer_module.RelationTrainer, "train", train)
    monkeypatch.setattr(quality, "judge", judge)
    result = quality.benchmark(relations=("pushes",), exemplars=2, steps=2, prompts=1, seeds=(0, 1),
                               sample_steps=2, progress=False)
    assert list(result["methods"]) == list(quality.METHODS) == [
        "dreamrelation", "dreamrelation_all_roles", "dreamrelation_reference_mlp", "dreamrelation_relation_mlp",
        "dreamrelation_motion_vo", "direct_lora", "no_hmt", "no_rcl", "no_subject_loras",
        "dreamrelation_high_noise", "direct_lora_high_noise", "no_hmt_high_noise",
        "dreamrelation_high_noise_trained", "direct_lora_high_noise_trained", "no_hmt_high_noise_trained", "base"]
    for method in result["methods"].values():
        assert 0.0 <= method["relation_accuracy"] <= 1.0 and 0.0 <= method["leakage"] <= 1.0
        clips = method["per_relation"]["pushes"]["clips"]
        assert method["relation_without_leak"] == sum(c["relation"] and not c["leaked"] for c in clips) / len(clips)
        assert len(method["per_relation"]["pushes"]["per_seed"]) == 2
        assert len(method["per_relation"]["pushes"]["clips"]) == 2
    assert result["protocol"] == quality.DEFAULT.name and sorted(result["placements"]) == sorted(quality.SYNTHREL.placements)
    assert result["placements"]["reference"]["method"] == "dreamrelation"
    assert set(result["placements"]["motion_vo"]["vs_reference"]) == {"difference", "low", "high", "beyond_noise"}
    assert "| dreamrelation |" in quality.markdown(result) and "motion_vo − reference" in quality.markdown(result)
    assert f"base `{quality.DEFAULT.weights.name}`." in quality.markdown(result)
    assert set(result["comparisons"]) == {
        "dreamrelation_vs_direct_lora", "dreamrelation_vs_direct_lora_without_leak",
        "no_hmt_vs_dreamrelation_without_leak", "no_hmt_vs_dreamrelation_leakage",
        "direct_lora_high_noise_vs_direct_lora_leakage", "direct_lora_high_noise_vs_direct_lora",
        "dreamrelation_high_noise_vs_direct_lora_high_noise",
        "dreamrelation_high_noise_vs_direct_lora_high_noise_without_leak",
        "no_hmt_high_noise_vs_direct_lora_high_noise_without_leak",
        "direct_lora_high_noise_trained_vs_direct_lora_high_noise_without_leak",
        "direct_lora_high_noise_trained_vs_direct_lora_high_noise_leakage",
        "no_hmt_high_noise_trained_vs_no_hmt_high_noise_without_leak",
        "no_hmt_high_noise_trained_vs_no_hmt_high_noise_leakage"}
    clips = {m: result["methods"][m]["per_relation"]["pushes"]["clips"] for m in ("no_hmt", "dreamrelation")}
    assert result["comparisons"]["no_hmt_vs_dreamrelation_leakage"]["difference"] == (
        sum(c["leaked"] for c in clips["no_hmt"]) - sum(c["leaked"] for c in clips["dreamrelation"])) / 2
    assert "| dreamrelation − direct_lora, relation without a leak |" in quality.markdown(result)
    assert "| no_hmt − dreamrelation, leakage |" in quality.markdown(result)
    assert quality.markdown(result, study=True).startswith("## SynthRel quality benchmark (protocol v2): the hybrid")
    # One training run per distinct setting: the all-roles diagnostic and the high-noise rows reuse a trained LoRA;
    # the …_high_noise_trained rows train their own, on σ ≥ recipe.HIGH_NOISE_SIGMA only.
    assert len(runs) == 11 and [r.subject_loras for r in runs].count(False) == 1
    assert [r.sigma_min for r in runs] == [quality.TRAIN_SIGMA_MIN] * 8 + [quality.HIGH_NOISE_SIGMA] * 3
    assert "Rows `…_high_noise_trained` train on σ ∈ [0.75, 1] only." in quality.markdown(result)
    assert runs[0].hybrid_masks and runs[0].subject_loras                  # DreamRelation's own run comes first
    # Each method is judged with its inference roles active (none for the base), the high-noise rows with the
    # LoRA switched off below recipe.HIGH_NOISE_SIGMA.
    inference, cut = {"relation", "ffn"}, quality.HIGH_NOISE_SIGMA
    assert judged == ([(inference, None), (set(ROLES), None)] + [(inference, None)] * 3 + [(set(ROLES), None)]
                      + [(inference, None)] * 3 + [(inference, cut), (set(ROLES), cut), (inference, cut)] * 2
                      + [(set(), None)])


def test_paired_bootstrap_tells_a_real_difference_from_noise():
    from dreamrelation_core.synthrel.quality import paired_bootstrap

    better = paired_bootstrap([1] * 40 + [0] * 8, [1] * 10 + [0] * 38)
    assert better["beyond_noise"] and better["low"] > 0 and abs(better["difference"] - 30 / 48) < 1e-9
    same = paired_bootstrap([1, 0] * 24, [0, 1] * 24)
    assert not same["beyond_noise"] and same["low"] < 0 < same["high"] and same["difference"] == 0
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1, 0], [1])


def test_v2_quick_benchmark_runs_on_textured_exemplars_and_resumes(monkeypatch, tmp_path):
    """The v2 protocol end to end: textured lossless exemplars with generic captions, unseen test subjects,
    per-clip verdicts; with a work folder a rerun judges nothing again, and other settings are refused."""
    from dreamrelation_core.synthrel import quality
    from dreamrelation_core.synthrel.protocol import V2

    prompts = []
    original_sample = quality.sample_clip

    def sample(base, prompt, *args):
        prompts.append(prompt)
        return original_sample(base, prompt, *args)

    monkeypatch.setattr(quality, "sample_clip", sample)
    settings = dict(relations=("orbits",), methods=("dreamrelation", "direct_lora"), exemplars=2, prompts=2,
                    seeds=(0,), sample_steps=2, progress=False, protocol=V2, work=tmp_path)
    result = quality.benchmark(steps=2, **settings)
    assert result["protocol"] == "v2" and result["comparisons"]["dreamrelation_vs_direct_lora"]["difference"] in (
        -1.0, -0.5, 0.0, 0.5, 1.0)
    assert prompts == ["a cyan plain triangle orbits a purple banded diamond",
                       "a purple plain triangle orbits a cyan shaded diamond"] * 2
    assert sorted(p.name for p in (tmp_path / "orbits").glob("*.json")) == ["direct_lora.json", "dreamrelation.json"]
    assert quality.benchmark(steps=2, **settings) == result and len(prompts) == 4       # resumed: nothing sampled
    with pytest.raises(ValueError, match=r"dreamrelation\.json was judged with other settings \(steps differ\)"):
        quality.benchmark(steps=3, **settings)
    seen = {a for s in V2.exemplar_subjects for a in s}
    for s1, s2 in V2.test_subjects(24):
        assert not {*s1, *s2} & seen
    # every prompt a new pair: a repeated one, sampled with the same seeds, repeats its clips exactly
    assert len(set(V2.test_subjects(24))) == 24 and V2.test_subjects(24)[:8] == V2.test_subjects(8)
    with pytest.raises(ValueError, match="protocol v2 has 24 distinct unseen subject pairs; expected 1 to 24, got 25"):
        V2.test_subjects(25)


def test_figures_go_to_the_checkouts_docs_or_elsewhere_to_out(tmp_path, monkeypatch):
    from dreamrelation_core import bench

    assert bench.default_doc() == bench.DOC                        # this checkout
    monkeypatch.setattr(bench, "DOC", tmp_path / "site-packages" / "docs" / "benchmarks.md")
    monkeypatch.chdir(tmp_path)
    assert bench.default_doc() == tmp_path / "benchmarks.md"     # an installed package: the working folder
    monkeypatch.setattr(bench, "evaluator_benchmark", lambda *a, **k: {"stub": True})
    monkeypatch.setattr(bench, "evaluator_markdown", lambda *a: "| figures |")
    bench.run("evaluator", out=tmp_path / "mine.md", progress=False)
    assert "| figures |" in (tmp_path / "mine.md").read_text()
    assert not (tmp_path / "site-packages").exists()


def test_speed_benchmark_measures_its_ratios_side_by_side(tmp_path):
    """`bench speed` (the CI smoke run): s/step of a DreamRelation and a plain LoRA step, of merged and base sampling,
    and their ratios, printed, in --json and in the --out section."""
    import json

    from dreamrelation_core.cli import main

    doc, out = tmp_path / "benchmarks.md", tmp_path / "speed.json"
    assert main(["bench", "speed", "--json", str(out), "--out", str(doc)]) == 0
    result = json.loads(out.read_text())
    assert result["device"].startswith("cpu") and result["comfy_over_cli"] is None
    (case,) = result["cases"].values()
    for key in ("dreamrelation_step", "plain_lora_step", "merged_sampling_step", "base_sampling_step"):
        assert 0 < case[key] < 10
    assert case["triplet_over_plain"] == pytest.approx(case["dreamrelation_step"] / case["plain_lora_step"])
    assert result["triplet_over_plain"] == case["triplet_over_plain"]
    assert 0.5 < result["merged_sampling_over_base"] < 2.0              # no adapter is left after the merge
    assert "<!-- bench:speed -->" in doc.read_text() and "triplet / plain" in doc.read_text()


def test_gpu_speed_suite_is_well_formed_without_a_gpu():
    """`bench speed --suite gpu` (run on a lent GPU): every case is a real-size config whose clip fits the
    transformer's patches and whose memory options are TrainConfig keys; without CUDA it says so."""
    import diffusers
    from accelerate import init_empty_weights

    from dreamrelation_core import speed
    from dreamrelation_core.archs import ARCHITECTURES
    from dreamrelation_core.config import TrainConfig

    cases = speed.gpu_cases()
    assert {c.arch for c in cases} == {"wan", "mochi"} and any(c.train.get("block_swap") for c in cases)
    for case in cases:
        TrainConfig(**case.train)
        arch = ARCHITECTURES[case.arch]
        with init_empty_weights():
            model = getattr(diffusers, arch.transformer_class)(**case.transformer)
        patch = model.config.patch_size
        patch = patch[-1] if isinstance(patch, (list, tuple)) else patch
        c, f, h, w = case.latent
        assert c == model.config.in_channels and h % patch == 0 and w % patch == 0, case.name
        assert case.train.get("block_swap", 0) <= len(getattr(model, arch.diffusers_blocks))
    sizes = {}
    for case in cases:
        with init_empty_weights():
            model = getattr(diffusers, ARCHITECTURES[case.arch].transformer_class)(**case.transformer)
        sizes[case.name.split(" ")[0]] = sum(p.numel() for p in model.parameters()) / 1e9
    assert 1.2 < sizes["Wan2.1-1.3B"] < 1.6 and 13 < sizes["Wan2.1-14B"] < 15 and 9 < sizes["Mochi"] < 11
    if not __import__("torch").cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            speed.benchmark(suite="gpu")


def test_study_variants_train_what_their_names_say(tmp_path):
    """Each hybrid-mask study variant changes DreamRelation's run config only where its name says."""
    from dreamrelation_core.synthrel import quality
    from dreamrelation_core.synthrel.recipe import run_config

    base = run_config(tmp_path, tmp_path, 100, {}, 0).train
    configs = {name: run_config(tmp_path, tmp_path, 100, overrides, 0).train
               for name, (overrides, _) in quality.STUDY.items()}
    assert configs["dreamrelation_3x_steps"].steps == 300 and configs["dreamrelation_3x_steps"].mask_weight == 50
    assert configs["dreamrelation_mask_weight_0_3x_steps"].mask_weight == 0 == configs[
        "dreamrelation_mask_weight_0"].mask_weight
    assert configs["dreamrelation_relation_steps_only"].group_weights == [1.0, 0.0, 0.0]
    assert configs["direct_lora_3x_steps"].steps == 300 and not configs["direct_lora_3x_steps"].hybrid_masks
    assert configs["dreamrelation"] == base and base.group_weights == [1.0, 1.0, 1.0]


def test_quality_benchmark_on_another_base_goes_only_to_out(tmp_path, monkeypatch, capsys):
    """`bench quality --base-weights W --relation R --prompts N --method M`: the benchmark runs on that base (a
    weak-prior one, docs/benchmarks.md), that relation, that many prompts and those rows; docs/benchmarks.md keeps
    the shipped run."""
    import shutil

    from dreamrelation_core import bench
    from dreamrelation_core.cli import main
    from dreamrelation_core.synthrel import quality

    calls = []

    def benchmark(**kwargs):
        calls.append(kwargs)
        return {"stub": True}

    monkeypatch.setattr(quality, "benchmark", benchmark)
    monkeypatch.setattr(quality, "markdown", lambda result, study: "| weak-prior figures |")
    weights = shutil.copy(quality.DEFAULT.weights, tmp_path / "weak.safetensors")
    shipped_docs = bench.DOC.read_text()
    assert main(["bench", "quality", "--base-weights", str(weights), "--relation", "pushes", "--prompts", "16"]) == 0
    assert "not written to docs" in capsys.readouterr().out and bench.DOC.read_text() == shipped_docs
    (call,) = calls
    assert call["protocol"].weights == weights and call["protocol"].name == quality.DEFAULT.name
    assert call["relations"] == ("pushes",) and call["prompts"] == 16 and call["seeds"] == (0, 1, 2)
    assert main(["bench", "quality", "--base-weights", str(weights), "--out", str(tmp_path / "weak.md")]) == 0
    assert calls[-1]["relations"] == quality.HELD_OUT and calls[-1]["prompts"] == quality.PROMPTS
    assert "| weak-prior figures |" in (tmp_path / "weak.md").read_text()
    assert main(["bench", "quality", "--base-weights", str(weights), "--method", "no_hmt", "--method", "base",
                 "--method", "dreamrelation"]) == 0
    assert calls[-1]["methods"] == ("dreamrelation", "no_hmt", "base")         # the benchmark's order
    assert main(["bench", "quality", "--base-weights", str(weights), "--seeds", "4", "--prompts", "24"]) == 0
    assert calls[-1]["seeds"] == (0, 1, 2, 3) and calls[-1]["prompts"] == 24
    assert main(["bench", "quality", "--method", "direct_lora"]) == 0              # a subset of rows: not the docs'
    assert calls[-1]["methods"] == ("direct_lora",) and bench.DOC.read_text() == shipped_docs
    with pytest.raises(ValueError, match=r"methods: \['hmt'\] are not rows of this benchmark; expected some of "):
        bench.run("quality", methods=["hmt"], progress=False)
    with pytest.raises(ValueError, match=r"relations: \['follows'\] are not held-out relations"):
        bench.run("quality", relations=["follows"], progress=False)
    with pytest.raises(ValueError, match="options of the quality benchmark only"):
        bench.run("base", prompts=3, progress=False)
    with pytest.raises(ValueError, match="options of the quality benchmark only"):
        bench.run("base", methods=["base"], progress=False)
    with pytest.raises(FileNotFoundError, match="no SynthRel v2 base at .*missing.safetensors"):
        bench.run("quality", base_weights=tmp_path / "missing.safetensors", progress=False)


def _base_renders_ground_truth(monkeypatch, swap_texture=False):
    """The base report's sampler replaced by ground-truth renders of each prompt (optionally with subject 1 in the
    next texture); returns the quality module so patched."""
    from dreamrelation_core.synthrel import quality
    from dreamrelation_core.synthrel.render import TEXTURES, parse_caption, render_clip

    def ground_truth(base, prompt, seed, steps, cfg, protocol):
        relation, s1, s2 = parse_caption(prompt)
        if not protocol.textured:                           # v1 captions name no texture: plain (colour, shape)
            s1, s2 = ((colour, shape) for colour, _, shape in (s1, s2))
        elif swap_texture:
            s1 = s1._replace(texture=TEXTURES[(TEXTURES.index(s1.texture) + 1) % len(TEXTURES)])
        return render_clip(relation, s1, s2, protocol.frames, protocol.size, seed, protocol.look)[0]

    monkeypatch.setattr(quality, "build_synthrel_base", lambda weights: None)
    monkeypatch.setattr(quality, "sample_clip", ground_truth)
    return quality


@pytest.mark.parametrize("swap_texture", [False, True])
def test_base_report_splits_fidelity_into_colours_and_shapes_and_textures(monkeypatch, swap_texture):
    """The base report reads ground truth as rendered in full, and a clip whose first subject wears another texture
    as colours and shapes right, textures (so every attribute) wrong."""
    quality = _base_renders_ground_truth(monkeypatch, swap_texture)
    report = quality.base_report(prompts_per_relation=1, seeds=(0,), progress=False)
    for relation, row in report.items():
        assert row["relation_accuracy"] == row["subjects_present"] == row["shapes_match"] == 1.0, relation
        assert row["textures_match"] == row["attributes_match"] == (0.0 if swap_texture else 1.0), relation
    table = quality.base_markdown(report)
    assert "| named colours and shapes | named textures | named attributes rendered |" in table
    assert f"| pushes | yes | 1.000 | 1.000 | 1.000 | {0 if swap_texture else 1}.000 | " in table


def test_base_report_reads_no_textures_on_v1_and_the_shipped_reports_render_as_documented(monkeypatch):
    import json
    from pathlib import Path

    from dreamrelation_core.synthrel.protocol import V1

    quality = _base_renders_ground_truth(monkeypatch)
    report = quality.base_report(prompts_per_relation=1, seeds=(0,), progress=False, protocol=V1)
    assert all("textures_match" not in row and row["shapes_match"] == 1.0 for row in report.values())
    assert "| subjects present | named colours and shapes | named attributes rendered |" in quality.base_markdown(
        report, "v1")
    # The JSON each `bench base` run wrote renders the table docs/benchmarks.md shows (v2 now splits fidelity).
    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "benchmarks.md").read_text()
    v2 = json.loads((root / "docs" / "benchmarks" / "synthrel_base_v2.json").read_text())
    assert quality.base_markdown(v2, "v2") in doc and "named textures in 0.236" in doc


def test_base_confusion_tool_counts_every_subject_frame_and_reads_ground_truth_right(monkeypatch):
    import importlib.util
    from pathlib import Path

    from dreamrelation_core.synthrel.base import HELD_OUT
    from dreamrelation_core.synthrel.render import RELATIONS

    _base_renders_ground_truth(monkeypatch)              # the "sample" is ground truth too
    path = Path(__file__).resolve().parents[1] / "tools" / "base_confusion.py"
    spec = importlib.util.spec_from_file_location("base_confusion", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    result = tool.confusion(prompts_per_relation=1, seeds=(0, 1))
    known = len(RELATIONS) - len(HELD_OUT)
    assert result["clips"] == 2 * known
    for attribute in ("texture", "shape"):
        assert result[attribute]["sample"] == result[attribute]["truth"]
        table = result[attribute]["truth"]
        assert sum(sum(row.values()) for row in table.values()) == 2 * known * 2 * 9     # 2 subjects × 9 frames
        assert all(set(row) == {named} for named, row in table.items())
    assert "| read right |" in tool.markdown(result) and " | 0." not in tool.markdown(result)

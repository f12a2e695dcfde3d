"""Every shipped workflow as an artist meets it: opened from the Templates dialog or as a file in the real frontend,
with every widget value the workflow means (from the builder's own spec), and the SynthRel demo run from the UI."""
import importlib.util
import io
import json
import urllib.parse
import urllib.request
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
PACK = "ComfyUI-DreamRelation"
# A blank canvas, loaded as a file would be, before a test adds its own nodes.
EMPTY_WORKFLOW = {"last_node_id": 0, "last_link_id": 0, "nodes": [], "links": [], "groups": [], "config": {},
                  "extra": {}, "version": 0.4}


def _builder():
    spec = importlib.util.spec_from_file_location("build_workflows", ROOT / "tools" / "build_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILDER = _builder()


def intended_inputs(name: str, info: dict) -> dict:
    """Node id -> {widget input: value} that workflow `name` means: the spec's values, else the input's default."""
    _, nodes, links = BUILDER.WORKFLOWS[name]()
    linked = {(dst, slot) for _, _, dst, slot in links}
    intended = {}
    for number, (node, class_type, values, _) in enumerate(nodes, start=1):
        spec = info[class_type]
        inputs = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        widgets = {}
        for input_name, input_spec in inputs.items():
            if BUILDER._is_widget(input_spec) and (node, input_name) not in linked:
                widgets[input_name] = values.get(input_name, BUILDER.widget_default(input_spec))
        intended[str(number)] = (class_type, widgets)
    return intended


def assert_links_kept(prompt: dict, name: str) -> None:
    """Every link of workflow `name`'s spec reaches the prompt the frontend sends (optional sockets included, such
    as Relation Sample's low_noise_model, which a frontend that drops it would silently leave unused)."""
    _, nodes, links = BUILDER.WORKFLOWS[name]()
    ids = {node: str(number) for number, (node, *_rest) in enumerate(nodes, start=1)}
    for source, slot, target, input_name in links:
        got = prompt[ids[target]]["inputs"].get(input_name)
        assert got == [ids[source], slot], f"{target}.{input_name}: the frontend sends {got!r}"


def assert_prompt_means(prompt: dict, intended: dict) -> None:
    assert sorted(prompt, key=int) == sorted(intended, key=int)
    for node_id, (class_type, widgets) in intended.items():
        assert prompt[node_id]["class_type"] == class_type
        for input_name, value in widgets.items():
            got = prompt[node_id]["inputs"].get(input_name)
            ok = got == pytest.approx(value, rel=1e-9) if isinstance(value, float) else got == value
            assert ok, f"{class_type} (node {node_id}) {input_name}: the frontend sends {got!r}, the workflow " \
                       f"means {value!r}"


def _inside(box, outer) -> bool:
    return (outer[0] <= box[0] and outer[1] <= box[1] and box[0] + box[2] <= outer[0] + outer[2]
            and box[1] + box[3] <= outer[1] + outer[3])


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def assert_layout_reads(layout: dict, name: str) -> None:
    """As drawn by the frontend: every node holds its own widgets, no node covers another, there is a Note, and
    each group holds exactly the nodes the builder put in it."""
    boxes = {int(node_id): box for node_id, _, box, _ in layout["nodes"]}
    assert [t for _, t, _, fits in layout["nodes"] if not fits] == []
    assert [(a, b) for a in boxes for b in boxes if a < b and _overlap(boxes[a], boxes[b])] == []
    assert "Note" in [t for _, t, _, _ in layout["nodes"]]
    _, nodes, _ = BUILDER.WORKFLOWS[name]()
    ids = {node: number for number, (node, *_rest) in enumerate(nodes, start=1)}
    _, groups = BUILDER.GUIDES[name]
    drawn = dict(layout["groups"])
    assert sorted(drawn) == sorted(title for title, _ in groups)
    for title, members in groups:
        inside = {node_id for node_id, box in boxes.items() if _inside(box, drawn[title])}
        assert inside == {ids[m] for m in members}, title


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_file_loads_with_every_value_it_means(ui, path):
    ui.load(json.loads(path.read_text()))
    assert ui.missing_types() == []
    prompt = ui.prompt()
    assert_prompt_means(prompt, intended_inputs(path.stem, ui.server.get("/object_info")))
    assert_links_kept(prompt, path.stem)
    assert {value for _, value in ui.control_values()} <= {"fixed"}       # every seed stays as shipped
    assert_layout_reads(ui.layout(), path.stem)
    shots = os.environ.get("DREAMRELATION_SCREENSHOTS")
    if shots and ui.version and not ui.version.startswith("1.27") and not ui.vue_nodes:     # the README's pictures
        Path(shots).mkdir(parents=True, exist_ok=True)
        ui.fit_and_screenshot(Path(shots) / f"{path.stem}.png")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_template_opens_from_the_templates_dialog(ui, path):
    ui.load(EMPTY_WORKFLOW)
    ui.open_template(PACK, path.stem)
    assert ui.thumbnail_width == 512                                        # the shipped .jpg, not a blank
    assert ui.node_types() == [n["type"] for n in json.loads(path.read_text())["nodes"]]
    assert_prompt_means(ui.prompt(), intended_inputs(path.stem, ui.server.get("/object_info")))


def test_new_nodes_keep_their_seed_fixed_and_small_floats(ui):
    """A Train node added from the library: its seed control starts "fixed" (a stock KSampler's does not, so the
    check can fail), and typed small hyper-parameters are kept, not rounded away."""
    ui.load(EMPTY_WORKFLOW)
    train, _ = ui.add_node("DreamRelationTrain"), ui.add_node("KSampler")
    assert dict(ui.control_values()) == {"DreamRelationTrain": "fixed", "KSampler": "randomize"}
    for name, value in (("rcl_weight", 0.01), ("rcl_weight", 0.002), ("learning_rate", 1e-6),
                        ("learning_rate", 3e-5), ("mask_weight", 12.5), ("sigma_min", 0.875)):
        ui.set_widget(train, name, value)
        assert ui.widgets(train)[name] == pytest.approx(value, rel=1e-6), name


def test_synthrel_demo_runs_from_the_ui(ui):
    """Workflow 4 opened from the Templates dialog and run (20 training steps, set in its widgets): it completes,
    saves both animations and the two LoRAs (the paper's and the recommended), draws 20 points on each Train's live
    loss chart and shows the evaluator's verdicts on the Evaluate nodes."""
    name = "dreamrelation_synthrel_demo"
    ui.open_template(PACK, name)
    ids = {n["type"]: [] for n in json.loads((ROOT / "workflows" / f"{name}.json").read_text())["nodes"]}
    for n in json.loads((ROOT / "workflows" / f"{name}.json").read_text())["nodes"]:
        ids[n["type"]].append(n["id"])
    loras = {}
    for train in ids["DreamRelationTrain"]:
        loras[train] = f"synthrel_ui_{ui.version}_{train}".replace(".", "_")
        ui.set_widget(train, "steps", 20)
        ui.set_widget(train, "lora_name", loras[train])
    assert sorted(ui.widgets(train)["hybrid_masks"] for train in loras) == [False, True]
    for node in ids["DreamRelationSample"]:
        ui.set_widget(node, "steps", 3)
    history = ui.run_and_wait()
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
    for node in ids["SaveAnimatedWEBP"]:
        (image,) = history["outputs"][str(node)]["images"]
        assert (ui.server.workdir / "output" / image["subfolder"] / image["filename"]).stat().st_size > 0
    ui.page.wait_for_function("(ids) => ids.every(id => (window.app.graph.getNodeById(id).widgets ?? [])"
                              ".some(w => w.name === 'verdict' && /^(PASS|FAIL)/.test(w.value)))",
                              arg=ids["DreamRelationSynthRelEvaluate"], timeout=30_000)
    for train, lora in loras.items():
        assert (ui.server.models / "loras" / f"{lora}.safetensors").is_file()
        # the live loss chart: one point per step, the losses the run logged
        chart = ui.widgets(train)["loss_chart"]
        log = [json.loads(line) for line in (ui.server.workdir / "output" / "dreamrelation" / lora / "log.jsonl")
               .read_text().splitlines()]
        assert [step for step, _ in chart] == list(range(1, 21)) == [r["step"] for r in log]
        assert [loss for _, loss in chart] == pytest.approx([r["loss"] for r in log])
    verdicts = [ui.widgets(node)["verdict"] for node in ids["DreamRelationSynthRelEvaluate"]]
    assert len(verdicts) == 3 and all("'pushes'" in v for v in verdicts), verdicts
    assert [e for e in ui.errors if "DreamRelation" in e] == []          # our extension threw nothing


def test_an_exemplar_without_masks_trains_without_hybrid_masks_from_the_ui(ui):
    """Add Exemplar with its mask inputs left unconnected, as an artist who skips masking: Train with hybrid_masks
    off runs and saves the LoRA; with it on, the run stops with the error that names the exemplar and the fix."""
    from dreamrelation_core.synthrel.protocol import DEFAULT

    ui.load(EMPTY_WORKFLOW)
    source, add = ui.add_node("DreamRelationSynthRelExemplars"), ui.add_node("DreamRelationAddExemplar")
    base, train = ui.add_node("DreamRelationLoadSynthRelBase"), ui.add_node("DreamRelationTrain")
    ui.connect(source, 1, add, "images")
    for slot, name in enumerate(("model", "clip", "vae")):
        ui.connect(base, slot, train, name)
    ui.connect(add, 0, train, "exemplars")
    ui.arrange([source, add, base, train], origin=(80, 80))
    ui.set_widget(source, "count", 1)
    ui.set_widget(add, "caption", "a shape pushes a shape")
    lora = f"unmasked_ui_{ui.version}_{int(ui.vue_nodes)}".replace(".", "_")
    height, width = DEFAULT.size
    for name, value in (("lora_name", lora), ("steps", 2), ("width", width), ("height", height),
                        ("length", DEFAULT.frames), ("checkpoint_every", 0), ("hybrid_masks", False)):
        ui.set_widget(train, name, value)

    history = ui.run_and_wait()
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
    assert (ui.server.models / "loras" / f"{lora}.safetensors").is_file()
    ui.set_widget(train, "hybrid_masks", True)
    history = ui.run_and_wait()
    assert history["status"]["status_str"] == "error"
    status = json.dumps(history["status"])
    assert "exemplars ['exemplar_00'] have no subject masks" in status
    assert "turn hybrid_masks off" in status


def test_boxes_drawn_on_the_first_frame_become_the_masks(ui):
    """Mask Video's editor: a first run without boxes still shows the clip's first frame on the node; two mouse
    drags write subject1_box and subject2_box; the next run's masks are exactly those boxes on that frame (tracked
    boxes, no GrabCut), and the editor then shows the frame with the masks tinted."""
    import numpy as np
    from PIL import Image

    from dreamrelation_core.synthrel.protocol import DEFAULT

    ui.load(EMPTY_WORKFLOW)
    source, masker = ui.add_node("DreamRelationSynthRelExemplars"), ui.add_node("DreamRelationMaskVideo")
    previews = []
    for slot in (0, 1):
        to_image, preview = ui.add_node("MaskToImage"), ui.add_node("PreviewImage")
        ui.connect(masker, slot, to_image, "mask")
        ui.connect(to_image, 0, preview, "images")
        previews.append(preview)
    ui.connect(source, 1, masker, "images")
    ui.set_widget(source, "count", 1)
    ui.set_widget(masker, "refine_boxes", False)
    ui.arrange([source, masker], origin=(80, 80))

    assert ui.run_and_wait()["status"]["status_str"] == "error"           # no boxes yet, but the frame is shown
    ui.page.wait_for_function("(id) => window.app.graph.getNodeById(id).dreamrelationBoxEditor.image !== null",
                              arg=masker, timeout=30_000)
    ui.dismiss_dialogs()                                                   # the artist closes the error
    height, width = DEFAULT.size
    drags = [((0.1, 0.2), (0.4, 0.6)), ((0.55, 0.3), (0.9, 0.8))]
    for start, end in drags:
        ui.drag_on(f'canvas[data-dreamrelation-boxes="{masker}"]', start, end)
    boxes = [[int(v) for v in ui.widgets(masker)[f"subject{k}_box"].split(",")] for k in (1, 2)]
    for box, ((fx0, fy0), (fx1, fy1)) in zip(boxes, drags):
        expected = [fx0 * width, fy0 * height, (fx1 - fx0) * width, (fy1 - fy0) * height]
        assert np.allclose(box, expected, atol=1.5), (box, expected)

    history = ui.run_and_wait()
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:2000]
    for box, preview in zip(boxes, previews):
        first = history["outputs"][str(preview)]["images"][0]
        query = urllib.parse.urlencode({k: first[k] for k in ("filename", "subfolder", "type")})
        with urllib.request.urlopen(f"{ui.server.url}/view?{query}") as response:      # as the frontend shows it
            mask = np.asarray(Image.open(io.BytesIO(response.read())))[..., 0]
        x, y, w, h = box
        expected = np.zeros_like(mask)
        expected[y:y + h, x:x + w] = 255
        assert (mask != expected).mean() < 0.02            # the drawn box itself, up to its one-pixel rim
        assert mask[y + 1:y + h - 1, x + 1:x + w - 1].min() == 255
    ui.page.wait_for_function("(id) => window.app.graph.getNodeById(id).dreamrelationBoxEditor.frame.masked",
                              arg=masker, timeout=30_000)

// ComfyUI-DreamRelation frontend extension (served from WEB_DIRECTORY = "./js"). It only shows what the server
// sends: nothing here computes anything the Python nodes do not.
import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const CHART_HEIGHT = 120;

// The Train node's live loss chart: a canvas in a DOM widget, fed by the server's "dreamrelation.loss" events
// (nodes/training.py sends the run's logged history at the start, then one point a step).
function addLossChart(node) {
    const canvas = document.createElement("canvas");
    canvas.width = 400;
    canvas.height = CHART_HEIGHT;
    canvas.style.width = "100%";
    canvas.style.height = `${CHART_HEIGHT}px`;
    const chart = { points: [], steps: 0 };
    node.addDOMWidget("loss_chart", "dreamrelation_loss_chart", canvas, {
        serialize: false,
        getValue: () => chart.points,
        setValue: () => {},
        getMinHeight: () => CHART_HEIGHT,
        getMaxHeight: () => CHART_HEIGHT,
    });
    chart.draw = () => {
        const ctx = canvas.getContext("2d");
        const { width, height } = canvas;
        ctx.fillStyle = "#1b1d22";
        ctx.fillRect(0, 0, width, height);
        ctx.fillStyle = "#9aa";
        ctx.font = "12px sans-serif";
        if (!chart.points.length) {
            ctx.fillText("loss: runs when Train runs", 8, 18);
            return;
        }
        const losses = chart.points.map(([, loss]) => loss);
        const low = Math.min(...losses), high = Math.max(...losses);
        const last = Math.max(chart.steps, chart.points[chart.points.length - 1][0], 1);
        const x = (step) => 8 + ((width - 16) * step) / last;
        const y = (loss) => height - 10 - ((height - 30) * (loss - low)) / Math.max(high - low, 1e-12);
        ctx.strokeStyle = "#6cf";
        ctx.lineWidth = 1.5;
        ctx.beginPath();
        chart.points.forEach(([step, loss], k) => (k ? ctx.lineTo(x(step), y(loss)) : ctx.moveTo(x(step), y(loss))));
        ctx.stroke();
        const [step, loss] = chart.points[chart.points.length - 1];
        ctx.fillText(`step ${step}/${chart.steps}  loss ${loss.toFixed(4)}  (min ${low.toFixed(4)})`, 8, 16);
    };
    chart.draw();
    node.dreamrelationLossChart = chart;
}

// Mask Video's box editor: the clip's first frame (sent by the node when it runs, then again with the tracked
// masks tinted); dragging on it writes the active subject's box input as "x,y,width,height" in frame pixels.
const BOX_COLOURS = ["rgb(102,221,225)", "rgb(179,62,234)"];      // the masks' tints (tracking.overlay)
const EDITOR_HEIGHT = 280;

function parseBox(text) {
    const values = String(text ?? "").split(",").map(Number);
    return values.length === 4 && values.every(Number.isFinite) ? values : null;
}

function addBoxEditor(node) {
    const root = document.createElement("div");
    root.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;height:100%";
    const bar = document.createElement("div");
    bar.style.cssText = "display:flex;gap:4px;font:12px sans-serif";
    const canvas = document.createElement("canvas");
    canvas.width = 400;
    canvas.height = 225;
    canvas.style.cssText = "width:100%;flex:1;min-height:0;cursor:crosshair;background:#111";
    const editor = { active: 0, frame: null, image: null, drag: null, buttons: [], canvas };
    ["subject 1", "subject 2"].forEach((label, k) => {
        const button = document.createElement("button");
        button.textContent = `draw ${label}`;
        button.style.cssText = `flex:1;border:2px solid ${BOX_COLOURS[k]};background:#222;color:#ddd;cursor:pointer`;
        button.onclick = () => { editor.active = k; editor.draw(); };
        editor.buttons.push(button);
        bar.appendChild(button);
    });
    root.append(bar, canvas);
    const boxWidget = (k) => node.widgets?.find((w) => w.name === `subject${k + 1}_box`);

    editor.draw = () => {
        canvas.dataset.dreamrelationBoxes = String(node.id);      // the id is assigned once the node is in a graph
        const ctx = canvas.getContext("2d");
        editor.buttons.forEach((b, k) => (b.style.background = k === editor.active ? "#444" : "#222"));
        ctx.fillStyle = "#111";
        ctx.fillRect(0, 0, canvas.width, canvas.height);
        if (!editor.image) {
            ctx.fillStyle = "#9aa";
            ctx.font = "13px sans-serif";
            ctx.fillText("Run once to see the first frame,", 10, 24);
            ctx.fillText("then drag a box around each subject.", 10, 42);
            return;
        }
        ctx.drawImage(editor.image, 0, 0, canvas.width, canvas.height);
        const sx = canvas.width / editor.frame.width, sy = canvas.height / editor.frame.height;
        [0, 1].forEach((k) => {
            const box = editor.drag?.subject === k ? editor.drag.box : parseBox(boxWidget(k)?.value);
            if (!box) return;
            ctx.strokeStyle = BOX_COLOURS[k];
            ctx.lineWidth = 2;
            ctx.strokeRect(box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy);
        });
    };

    const toFrame = (event) => {
        const rect = canvas.getBoundingClientRect();
        const x = ((event.clientX - rect.left) / rect.width) * editor.frame.width;
        const y = ((event.clientY - rect.top) / rect.height) * editor.frame.height;
        return [Math.min(Math.max(x, 0), editor.frame.width), Math.min(Math.max(y, 0), editor.frame.height)];
    };
    canvas.addEventListener("pointerdown", (event) => {
        if (!editor.image) return;
        event.stopPropagation();
        event.preventDefault();
        canvas.setPointerCapture?.(event.pointerId);
        editor.drag = { subject: editor.active, start: toFrame(event), box: null };
    });
    canvas.addEventListener("pointermove", (event) => {
        if (!editor.drag) return;
        event.stopPropagation();
        const [x0, y0] = editor.drag.start, [x1, y1] = toFrame(event);
        editor.drag.box = [Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0)].map(Math.round);
        editor.draw();
    });
    canvas.addEventListener("pointerup", (event) => {
        if (!editor.drag) return;
        event.stopPropagation();
        const { subject, box } = editor.drag;
        editor.drag = null;
        if (box && box[2] >= 2 && box[3] >= 2) {
            const widget = boxWidget(subject);
            widget.value = box.join(",");
            widget.callback?.(widget.value, app.canvas, node);
            editor.active = 1 - subject;          // the next drag draws the other subject
            node.setDirtyCanvas?.(true, true);
        }
        editor.draw();
    });

    node.addDOMWidget("box_editor", "dreamrelation_box_editor", root, {
        serialize: false,
        getValue: () => ({ frame: editor.frame, active: editor.active }),
        setValue: () => {},
        getMinHeight: () => EDITOR_HEIGHT,
    });
    editor.draw();
    node.dreamrelationBoxEditor = editor;
}

api.addEventListener("dreamrelation.frame", ({ detail }) => {
    const node = app.graph?.getNodeById(Number(detail.node)) ?? app.graph?.getNodeById(detail.node);
    const editor = node?.dreamrelationBoxEditor;
    if (!editor) return;
    const image = new Image();
    image.onload = () => {
        editor.canvas.height = Math.round((editor.canvas.width * detail.height) / detail.width);
        editor.image = image;
        editor.frame = { width: detail.width, height: detail.height, masked: detail.masked };
        editor.draw();
    };
    image.src = detail.image;
});

api.addEventListener("dreamrelation.loss", ({ detail }) => {
    const node = app.graph?.getNodeById(Number(detail.node)) ?? app.graph?.getNodeById(detail.node);
    const chart = node?.dreamrelationLossChart;
    if (!chart) return;
    if (detail.reset) chart.points = [];
    chart.points.push(...detail.points);
    chart.steps = detail.steps;
    chart.draw();
});

app.registerExtension({
    name: "DreamRelation.Core",

    // A new DreamRelation node keeps its seed fixed: with the frontend's default "randomize", a run resumed after
    // Cancel would silently train on other noise and exemplar draws. Loaded workflows keep their saved choice
    // (they are configured after this hook).
    nodeCreated(node) {
        if (!node.comfyClass?.startsWith("DreamRelation")) return;
        for (const widget of node.widgets ?? []) {
            if (widget.name === "control_after_generate") widget.value = "fixed";
        }
    },

    async beforeRegisterNodeDef(nodeType, nodeData) {
        const addWidget = { DreamRelationMaskVideo: addBoxEditor, DreamRelationTrain: addLossChart }[nodeData.name];
        if (addWidget) {
            const onNodeCreated = nodeType.prototype.onNodeCreated;
            nodeType.prototype.onNodeCreated = function () {
                const result = onNodeCreated?.apply(this, arguments);
                addWidget(this);
                return result;
            };
        }
        // SynthRel Evaluate returns its verdict as UI text: show it on the node, read-only and never saved.
        if (nodeData.name !== "DreamRelationSynthRelEvaluate") return;
        const onExecuted = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (output) {
            onExecuted?.apply(this, arguments);
            let widget = this.widgets?.find((w) => w.name === "verdict");
            if (!widget) {
                widget = ComfyWidgets.STRING(this, "verdict", ["STRING", { multiline: true }], app).widget;
                if (widget.inputEl) widget.inputEl.readOnly = true;
                widget.serialize = false;
            }
            widget.value = (output?.text ?? []).join("\n");
            this.setDirtyCanvas?.(true, true);
        };
    },
});

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
        if (nodeData.name === "DreamRelationTrain") {
            const onNodeCreated = nodeType.prototype.onNodeCreated;
            nodeType.prototype.onNodeCreated = function () {
                const result = onNodeCreated?.apply(this, arguments);
                addLossChart(this);
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

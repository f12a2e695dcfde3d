// ComfyUI-DreamRelation frontend extension (served from WEB_DIRECTORY = "./js"). It only shows what the server
// sends: nothing here computes anything the Python nodes do not.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

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

    // SynthRel Evaluate returns its verdict as UI text: show it on the node, read-only and never saved.
    async beforeRegisterNodeDef(nodeType, nodeData) {
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

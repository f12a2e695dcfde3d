"""A ComfyUI frontend page driven by Playwright: the calls an artist's clicks make, nothing emulated in Python."""
from __future__ import annotations

import shutil
import time

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


class FrontendPage:
    def __init__(self, server):
        from playwright.sync_api import sync_playwright

        self.server = server
        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(executable_path=shutil.which("chromium"),
                                                        args=CHROMIUM_ARGS)
        self.page = self.browser.new_page(viewport={"width": 1600, "height": 1000})
        self.errors = []
        self.page.on("pageerror", lambda error: self.errors.append(f"{error}\n{error.stack}"))

    def open(self, vue_nodes: bool = False) -> None:
        """Load the frontend; `vue_nodes`: switch on its Vue node renderer, as its settings dialog does."""
        self.vue_nodes = vue_nodes
        self.page.goto(self.server.url)
        self.page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        self.version = self.page.evaluate("window.__COMFYUI_FRONTEND_VERSION__ ?? null")
        self.page.wait_for_function(
            "window.LiteGraph.registered_node_types['DreamRelationTrain'] !== undefined", timeout=60_000)
        if vue_nodes:
            self.evaluate("async () => { await window.app.extensionManager.setting.set("
                          "'Comfy.VueNodes.Enabled', true); }")
            assert self.evaluate("window.app.extensionManager.setting.get('Comfy.VueNodes.Enabled')") is True
            # nodes are now DOM elements, not canvas drawings
            self.add_node("DreamRelationTrain")
            self.page.wait_for_function("document.querySelectorAll('[data-node-id]').length > 0", timeout=10_000)
        time.sleep(1)
        self.dismiss_dialogs()           # a new user's frontend opens with a template picker

    def dismiss_dialogs(self) -> None:
        for _ in range(5):
            if self.page.locator("[role=dialog]:visible").count() == 0:
                return
            self.page.keyboard.press("Escape")
            time.sleep(0.3)

    def close(self) -> None:
        self.browser.close()
        self._playwright.stop()

    def evaluate(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def load(self, workflow: dict) -> None:
        """What opening a workflow file does: app.loadGraphData."""
        self.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)

    def prompt(self) -> dict:
        """The API prompt exactly as Run sends it (the frontend's own graph-to-prompt)."""
        return self.evaluate("async () => (await window.app.graphToPrompt()).output")

    def node_types(self) -> list[str]:
        return self.evaluate("() => window.app.graph._nodes.map(n => n.type)")

    def missing_types(self) -> list[str]:
        return self.evaluate("() => window.app.graph._nodes.map(n => n.type)"
                             ".filter(t => !window.LiteGraph.registered_node_types[t])")

    def widgets(self, node_id: int) -> dict:
        return dict(self.evaluate("(id) => window.app.graph.getNodeById(id).widgets.map(w => [w.name, w.value])",
                                  node_id))

    def layout(self) -> dict:
        """Node boxes [x, y, width, height] as drawn (title bar included), whether each node's own content fits in
        it (computeSize), and group boxes by title."""
        return self.evaluate("""() => {
            const title = window.LiteGraph.NODE_TITLE_HEIGHT;
            const nodes = window.app.graph._nodes.map(n => {
                const need = n.computeSize();
                return [n.id, n.type, [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title],
                        need[0] <= n.size[0] + 1 && need[1] <= n.size[1] + 1];
            });
            const groups = (window.app.graph._groups ?? window.app.graph.groups ?? []).map(
                g => [g.title, Array.from(g._bounding ?? g.bounding)]);
            return {nodes, groups};
        }""")

    def control_values(self) -> list:
        """(node type, value) of every "control after generate" widget in the graph."""
        return self.evaluate("() => window.app.graph._nodes.flatMap(n => (n.widgets ?? [])"
                             ".filter(w => w.name === 'control_after_generate').map(w => [n.type, w.value]))")

    def set_widget(self, node_id: int, name: str, value) -> None:
        """Set a widget as typing into it does (its setValue: rounding, clamping and callbacks)."""
        self.evaluate("""([id, name, value]) => {
            const node = window.app.graph.getNodeById(id);
            const widget = node.widgets.find(w => w.name === name);
            if (widget.setValue) widget.setValue(value, {node, canvas: window.app.canvas});
            else { widget.value = value; widget.callback?.(value, window.app.canvas, node); }
        }""", [node_id, name, value])

    def add_node(self, node_type: str) -> int:
        """A node added from the node library (LiteGraph.createNode + graph.add, as the search box does)."""
        return self.evaluate("""(type) => {
            const node = window.LiteGraph.createNode(type);
            window.app.graph.add(node);
            return node.id;
        }""", node_type)

    def connect(self, source: int, slot: int, target: int, input_name: str) -> None:
        self.evaluate("""([source, slot, target, name]) => {
            const graph = window.app.graph, to = graph.getNodeById(target);
            graph.getNodeById(source).connect(slot, to, to.inputs.findIndex(i => i.name === name));
        }""", [source, slot, target, input_name])

    def arrange(self, node_ids, origin=(80, 80)) -> None:
        """Lay the nodes out left to right from `origin` at zoom 1, so they are on screen to be clicked."""
        self.evaluate("""([ids, origin]) => {
            let x = origin[0];
            for (const id of ids) {
                const node = window.app.graph.getNodeById(id);
                node.pos = [x, origin[1]];
                x += node.size[0] + 40;
            }
            window.app.canvas.ds.scale = 1;
            window.app.canvas.ds.offset = [0, 0];
            window.app.canvas.setDirty(true, true);
        }""", [node_ids, list(origin)])
        time.sleep(0.5)

    def drag_on(self, selector: str, start, end) -> None:
        """A mouse drag across the element, from and to fractions (x, y) of its box."""
        box = self.page.locator(selector).bounding_box()
        at = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in (start, end)]
        self.page.mouse.move(*at[0])
        self.page.mouse.down()
        for k in range(1, 6):
            self.page.mouse.move(at[0][0] + (at[1][0] - at[0][0]) * k / 5, at[0][1] + (at[1][1] - at[0][1]) * k / 5)
        self.page.mouse.up()

    def run_and_wait(self, timeout: float = 600) -> dict:
        """Run, then the history entry of the prompt it queued once it has finished."""
        before = set(self.server.get("/history"))
        self.run()
        deadline = time.time() + timeout
        while time.time() < deadline and not set(self.server.get("/history")) - before:
            time.sleep(0.5)
        (prompt_id,) = set(self.server.get("/history")) - before
        return self.server.wait(prompt_id, timeout=timeout)

    def open_template(self, pack: str, name: str) -> None:
        """Templates dialog -> the pack's section -> the template's card."""
        self.evaluate("async () => { await window.app.extensionManager.command.execute('Comfy.BrowseTemplates'); }")
        dialog = self.page.get_by_role("dialog")
        dialog.get_by_text(pack, exact=True).first.click()
        card = dialog.get_by_text(name, exact=True).first
        card.wait_for(timeout=30_000)
        card.scroll_into_view_if_needed()          # thumbnails load lazily: a card below the fold has none yet
        # The card's thumbnail: the image nearest to its title (the frontend fetches it into a blob: URL).
        width = """(name) => {
            const title = Array.from(document.querySelectorAll('[role=dialog] *')).find(
                e => e.children.length === 0 && e.textContent.trim() === name);
            for (let e = title; e; e = e.parentElement) {
                const img = e.querySelector('img');
                if (img) return img.complete ? img.naturalWidth : 0;
            }
            return 0;
        }"""
        try:
            self.page.wait_for_function(width, arg=name, timeout=15_000)
        except Exception:          # Playwright's TimeoutError: no thumbnail shown; the test says so
            pass
        self.thumbnail_width = self.evaluate(width, name)
        card.click()
        self.page.wait_for_function("() => window.app.graph._nodes.length > 0", timeout=30_000)
        time.sleep(0.5)

    def fit_and_screenshot(self, path) -> None:
        self.dismiss_dialogs()
        self.evaluate("async () => { await window.app.extensionManager.command.execute('Comfy.Canvas.FitView'); }")
        time.sleep(0.5)
        self.page.screenshot(path=str(path))

    def run(self) -> None:
        """The Run button's action: queue the current graph once."""
        self.evaluate("async () => { await window.app.queuePrompt(0, 1); }")

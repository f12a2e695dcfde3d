"""UI-format workflow (what the frontend saves) -> API-format prompt (what POST /prompt runs), via /object_info.

Widgets map positionally onto the widget inputs in `input_order`; INT inputs with `control_after_generate` or
named seed / noise_seed carry one extra value; a widget input fed by a link keeps its value slot (the frontend saves
one for it, tests/browser), and the link wins. This is a fast server-side check; tests/browser checks the same
workflows through the real frontend.
"""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote"}           # graph-to-prompt leaves them out


def is_widget(input_spec) -> bool:
    """An input the frontend shows as a widget (a value saved in `widgets_values`), not only as a socket."""
    return isinstance(input_spec[0], list) or input_spec[0] in WIDGET_TYPES


def to_api(workflow: dict, info: dict) -> dict:
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4) or node["type"] in FRONTEND_ONLY:        # muted / bypassed / notes
            continue
        spec = info[node["type"]]
        all_inputs = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = iter(node.get("widgets_values", []))
        inputs = {}
        for name in spec["input_order"].get("required", []) + spec["input_order"].get("optional", []):
            input_spec = all_inputs[name]
            options = input_spec[1] if len(input_spec) > 1 else {}
            if is_widget(input_spec):
                # Widgets added to a node after the workflow was saved keep their defaults (as in the frontend).
                inputs[name] = next(values, options.get("default"))
                if input_spec[0] == "INT" and (options.get("control_after_generate") or name in ("seed", "noise_seed")):
                    next(values, None)
            if name in linked:
                link = linked[name]
                inputs[name] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def static_errors(workflow: dict, info: dict) -> list[str]:
    """Missing node types, links whose types do not match, widget counts that do not fit."""
    errors = []
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for node in workflow["nodes"]:
        if node["type"] not in info and node["type"] not in FRONTEND_ONLY:
            errors.append(f"node {node['id']}: unknown type {node['type']}")
    for link_id, src, slot, dst, dst_slot, kind in workflow["links"]:
        out_type = info[nodes[src]["type"]]["output"][slot]
        in_type = nodes[dst]["inputs"][dst_slot]["type"]
        if out_type != kind or (in_type != kind and "*" not in (in_type, kind)):
            errors.append(f"link {link_id}: {out_type} -> {in_type} (declared {kind})")
    return errors

"""A SavedModel is a program: read its graph before running any of it.

:func:`check_saved_model` parses ``saved_model.pb`` (a protocol buffer; parsing runs nothing) and refuses the
export, naming the op and the function, unless

* every node of the top-level graph is one of :data:`TOP_LEVEL_OPS` (variable handles, placeholders, calls);
* every function reachable from the save / restore entry points of the saver (``saver_def``) uses only
  :data:`SAVER_OPS` (reading and writing its own variables' checkpoint);
* every other function -- the endpoints, their callees, initialisers, anything else in the library -- uses
  only :data:`COMPUTE_OPS`: pure tensor arithmetic, no file, network, Python or custom op;
* every function a node calls (``StatefulPartitionedCall``'s ``f`` and any other function-valued attribute)
  exists in the library.

:data:`COMPUTE_OPS` is what the project's own exports contain (every family, polar and raw aerial inputs,
with and without the aerial resize; ``tests/test_export_security.py`` checks that each export passes) plus a
few more side-effect-free math ops a family could reasonably need. A new family whose export uses another op
fails here first, with the op's name: add it to the list only if it is pure computation.
"""

from __future__ import annotations

import os

from common.errors import CVGLError

TOP_LEVEL_OPS = frozenset({"Const", "NoOp", "Placeholder", "ReadVariableOp", "StatefulPartitionedCall",
                           "PartitionedCall", "VarHandleOp", "Identity"})

SAVER_OPS = frozenset({"AssignVariableOp", "Const", "DisableCopyOnRead", "Identity", "MergeV2Checkpoints", "NoOp",
                       "Pack", "ReadVariableOp", "RestoreV2", "SaveV2", "Select", "ShardedFilename",
                       "StaticRegexFullMatch", "StringJoin", "StatefulPartitionedCall", "PartitionedCall"})

# seen in the project's exports
_OBSERVED = {
    "AddV2", "ArgMax", "BatchMatMulV2", "BiasAdd", "Bitcast", "BitwiseAnd", "Cast", "ConcatV2", "Const", "Conv2D",
    "Cos", "Einsum", "Equal", "Erfc", "ExpandDims", "Floor", "FloorDiv", "GatherV2", "GreaterEqual", "Identity",
    "Less", "LogicalAnd", "MatMul", "Max", "MaxPool", "Maximum", "Mean", "Minimum", "Mul", "Neg", "NoOp", "Pack",
    "Pad", "Prod", "Range", "ReadVariableOp", "RealDiv", "Relu", "Reshape", "ResizeArea", "Rsqrt", "SelectV2",
    "Shape", "Sin", "Softmax", "Sqrt", "Square", "SquaredDifference", "Squeeze", "StatefulPartitionedCall",
    "StopGradient", "StridedSlice", "Sub", "Sum", "Transpose",
}
# pure tensor math a family may add (no state beyond reading its own variables, no I/O)
_PURE_EXTRA = {
    "Abs", "All", "Any", "ArgMin", "AvgPool", "BroadcastTo", "Ceil", "ClipByValue", "DepthwiseConv2dNative",
    "DivNoNan", "Elu", "Erf", "Exp", "Expm1", "Fill", "FloorMod", "FusedBatchNormV3", "Gelu", "Greater",
    "IdentityN", "LeakyRelu", "LessEqual", "Log", "Log1p", "LogSoftmax", "LogicalNot", "LogicalOr", "Min",
    "MirrorPad", "NotEqual", "OnesLike", "PadV2", "PartitionedCall", "Pow", "Reciprocal", "Relu6",
    "ResizeBilinear", "ResizeNearestNeighbor", "ReverseV2", "Round", "Select", "Selu", "Sigmoid", "Sign",
    "Size", "Slice", "Softplus", "Softsign", "Split", "SplitV", "Tanh", "Tile", "TopKV2", "Unpack", "Where",
    "ZerosLike", "AddN", "Atan2", "Conv2DBackpropInput", "Cumsum", "Einsum", "Rank", "ShapeN", "Snapshot",
}
COMPUTE_OPS = frozenset(_OBSERVED | _PURE_EXTRA)


def _called_functions(node) -> list:
    """Names of the functions a node calls through its attributes (``f``, then/else branches, bodies...)."""
    names = []
    for value in node.attr.values():
        if value.HasField("func"):
            names.append(value.func.name)
        if value.HasField("list"):
            names.extend(f.name for f in value.list.func)
    return names


def check_saved_model(saved_model_dir: str) -> dict:
    """Refuse a SavedModel whose graph could do more than compute descriptors; see the module docstring.

    Returns ``{"functions": n, "ops": sorted op types}`` of an accepted graph; raises CVGLError otherwise.
    Nothing of the SavedModel is executed.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(saved_model_dir, "saved_model.pb")
    fix = "only load exports written by python -m experiments.export; re-export the model from its run"
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString(data)
    except (OSError, ValueError, Exception) as exc:  # noqa: BLE001 - protobuf raises DecodeError
        raise CVGLError(f"SavedModel {path} is corrupt: its graph cannot be read ({type(exc).__name__}: {exc}); {fix}") from None
    if len(proto.meta_graphs) != 1:
        raise CVGLError(f"SavedModel {path} holds {len(proto.meta_graphs)} graphs, an export holds one; {fix}")
    graph = proto.meta_graphs[0].graph_def
    library = {f.signature.name: f for f in graph.library.function}
    top = {n.name: n for n in graph.node}
    seen_ops = set()

    for node in graph.node:
        if node.op not in TOP_LEVEL_OPS:
            raise CVGLError(f"SavedModel {path} refused: its top-level graph runs op {node.op!r} (node "
                            f"{node.name!r}), which no export of this project contains; {fix}")
    if graph.library.gradient:
        raise CVGLError(f"SavedModel {path} refused: it registers custom gradients; {fix}")

    def reachable(starts) -> set:
        out, todo = set(), list(starts)
        while todo:
            name = todo.pop()
            if name in out:
                continue
            if name not in library:
                raise CVGLError(f"SavedModel {path} refused: a node calls function {name!r}, which is not in the "
                                f"graph (a custom op or a missing body); {fix}")
            out.add(name)
            for n in library[name].node_def:
                todo.extend(_called_functions(n))
        return out

    saver = proto.meta_graphs[0].saver_def
    saver_nodes = [top[t.split(":")[0]] for t in (saver.save_tensor_name, saver.restore_op_name)
                   if t and t.split(":")[0] in top]
    saver_fns = reachable([f for n in saver_nodes for f in _called_functions(n)])
    other_starts = [f for n in graph.node if n not in saver_nodes for f in _called_functions(n)]
    compute_fns = reachable(other_starts) | (set(library) - saver_fns)
    for name in sorted(compute_fns):
        for node in library[name].node_def:
            seen_ops.add(node.op)
            if node.op not in COMPUTE_OPS:
                raise CVGLError(f"SavedModel {path} refused: function {name!r} runs op {node.op!r}, which is not "
                                f"pure computation (allowed: common/serving/graph_check.py); {fix}")
    for name in sorted(saver_fns - compute_fns):
        for node in library[name].node_def:
            seen_ops.add(node.op)
            if node.op not in SAVER_OPS:
                raise CVGLError(f"SavedModel {path} refused: its variable saver {name!r} runs op {node.op!r}; {fix}")
    return {"functions": len(library), "ops": sorted(seen_ops)}


__all__ = ["check_saved_model", "COMPUTE_OPS", "SAVER_OPS", "TOP_LEVEL_OPS"]

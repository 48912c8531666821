"""Read a (block-)quantised ONNX network file into plain fp32 numpy arrays, and write the repaired fp32
graph that ONNX Runtime runs (the reference the torch port is checked against).

Needs the ``onnx`` package (``pip install facesearch[import]``), imported only here.

Written for OpenCV Zoo's SFace file, whose structure is below; the reader refuses node types it does not
know rather than guess.

The shipped file (``face_recognition_sface_2021dec_int8bq.onnx``, sha256 fb143eea...74ee) is an
opset-21, IR-version-6 graph of 145 nodes:

* 29 ``DequantizeLinear`` nodes, one per weight tensor (27 conv kernels, the fully connected weight and its
  bias), each int8 with a per-block float32 scale and int8 zero point (``axis`` = 1, ``block_size`` 9, 27,
  32 or 64 for the kernels, ``axis`` = 0, ``block_size`` 64 for the bias); 27 of them are followed by a
  ``Reshape`` to the 4-d conv kernel shape (outputs ``<name>_reshaped``); the Gemm reads
  ``pre_fc1_weight_dequantized`` / ``pre_fc1_bias_dequantized`` directly.
* the float part: Sub/Mul (input normalisation), 27 x (Conv, BatchNormalization, PRelu), a final
  BatchNormalization, Dropout (ratio 0.4, a no-op at inference), Flatten, Gemm, BatchNormalization.

What breaks ONNX Runtime (1.32 here): the graph still declares the *original* weight names
(``conv_1_conv2d_weight``, ..., ``pre_fc1_weight``, ``pre_fc1_bias``: 29 of them) as graph inputs, with no
initialiser behind them and no node consuming them, so ORT lists them as required inputs and refuses to run
(``Required inputs ([...]) are missing from input feed``). The nodes themselves consume the
``_reshaped`` / ``_dequantized`` tensors. The graph input ``data`` is also fixed to batch 1.

:func:`read_onnx` does the dequantisation arithmetic itself (numpy, per the ONNX DequantizeLinear-21
spec: ``y = (x - zero_point) * scale``, with ``scale``/``zero_point`` of the input's rank and every entry
along ``axis`` replicated ``block_size`` times) and returns the float graph with every weight as a plain
fp32 array under its base name. :func:`write_fp32_onnx` writes that float graph as a clean ONNX model
(IR 10, opset 21, only ``data`` as graph input, batch dimension symbolic ``N``), and
:func:`write_repaired_int8bq_onnx` writes the quantised graph with only the dangling inputs removed, so that
ORT's own DequantizeLinear can be compared with the numpy arithmetic here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from facesearch.errors import ModelFileError


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as e:
        raise ModelFileError("importing an ONNX network needs the onnx package: pip install 'facesearch[import]'") from e
    return onnx, helper, numpy_helper

#: node types of the float part of the graph (everything that is not weight dequantisation)
COMPUTE_OPS = {"Sub", "Mul", "Conv", "BatchNormalization", "PRelu", "Constant", "Dropout", "Flatten", "Gemm"}


@dataclass
class NodeDesc:
    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)


@dataclass
class GraphDesc:
    """The float graph after folding the dequantisation: nodes in order, with weight inputs renamed to
    their base names (``conv_1_conv2d_weight``, ``pre_fc1_weight``, ...), all of them in the weights dict."""

    input_name: str
    input_shape: list  # as declared in the file (batch 1)
    output_name: str
    output_shape: list
    opset: int
    nodes: list[NodeDesc]
    #: per folded weight: (quantised shape, final shape, axis, block_size, number of blocks)
    quantisation: dict

    def op_counts(self) -> dict:
        out: dict = {}
        for n in self.nodes:
            out[n.op_type] = out.get(n.op_type, 0) + 1
        return out


def dequantize_linear(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int = 1,
                      block_size: int = 0) -> np.ndarray:
    """ONNX DequantizeLinear (opset 21) in numpy, float32 result.

    * scalar scale: per tensor; 1-d scale with ``block_size`` 0: per axis (scale along ``axis``);
    * scale of the input's rank with ``block_size`` > 0: blocked: ``scale.shape[axis] ==
      ceil(x.shape[axis] / block_size)``, all other dimensions equal, and element ``i`` along ``axis`` uses
      block ``i // block_size``.
    ``y = (x - zero_point) * scale``; the integer difference is exact in float32, so there is one rounding.
    """
    x = np.asarray(x)
    scale = np.asarray(scale, np.float32)
    zp = np.zeros((), np.int32) if zero_point is None else np.asarray(zero_point).astype(np.int32)
    if zp.shape != scale.shape and zero_point is not None:
        raise ValueError(f"zero point shape {zp.shape} != scale shape {scale.shape}")
    xi = x.astype(np.int32)
    if scale.ndim == 0 or scale.size == 1 and block_size == 0:
        s, z = scale.reshape(()), zp.reshape(())
    else:
        ax = axis % x.ndim
        if block_size > 0:
            if scale.ndim != x.ndim:
                raise ValueError("blocked quantisation needs scale of the input's rank")
            nblk = -(-x.shape[ax] // block_size)
            if scale.shape[ax] != nblk:
                raise ValueError(f"scale has {scale.shape[ax]} blocks along axis {ax}, expected {nblk}")
            for d in range(x.ndim):
                if d != ax and scale.shape[d] != x.shape[d]:
                    raise ValueError(f"scale dim {d} is {scale.shape[d]}, input has {x.shape[d]}")
            idx = np.arange(x.shape[ax]) // block_size
            s = np.take(scale, idx, axis=ax)
            z = np.take(zp, idx, axis=ax) if zp.ndim else zp
        else:
            if scale.ndim != 1 or scale.shape[0] != x.shape[ax]:
                raise ValueError("per-axis quantisation needs a 1-d scale as long as the axis")
            shp = [1] * x.ndim
            shp[ax] = -1
            s, z = scale.reshape(shp), (zp.reshape(shp) if zp.ndim else zp)
    return ((xi - z).astype(np.float32) * s).astype(np.float32)


def _base_name(t: str) -> str:
    for suf in ("_reshaped", "_dequantized"):
        if t.endswith(suf):
            return t[: -len(suf)]
    return t


def read_onnx(path: str) -> tuple[GraphDesc, dict[str, np.ndarray]]:
    """Parse the SFace file: fold every DequantizeLinear (+ Reshape) into an fp32 array and return the float
    graph's description and ``{name: np.float32 array}`` for every parameter it uses."""
    onnx, helper, numpy_helper = _onnx()
    m = onnx.load(path)
    g = m.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    produced: dict[str, np.ndarray] = {}
    quant: dict = {}
    nodes: list[NodeDesc] = []
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "DequantizeLinear":
            x = inits[n.input[0]]
            scale = inits[n.input[1]]
            zp = inits[n.input[2]] if len(n.input) > 2 and n.input[2] else None
            if x.dtype != np.int8:
                raise ValueError(f"{n.name}: expected int8, got {x.dtype}")
            y = dequantize_linear(x, scale, zp, attrs.get("axis", 1), attrs.get("block_size", 0))
            produced[n.output[0]] = y
            base = _base_name(n.output[0])
            quant[base] = {"quantised_shape": list(x.shape), "axis": attrs.get("axis", 1),
                           "block_size": attrs.get("block_size", 0), "blocks": list(np.shape(scale)),
                           "shape": list(y.shape)}
        elif n.op_type == "Reshape" and n.input[0] in produced:
            shape = inits[n.input[1]]
            y = produced[n.input[0]].reshape(tuple(int(v) for v in shape))
            produced[n.output[0]] = y
            quant[_base_name(n.output[0])]["shape"] = list(y.shape)
        else:
            if n.op_type not in COMPUTE_OPS:
                raise ModelFileError(f"unexpected node type {n.op_type} ({n.name})")
            if n.op_type == "Constant":
                attrs = {"value": numpy_helper.to_array(attrs["value"])}
            nodes.append(NodeDesc(n.op_type, n.name, [_base_name(i) for i in n.input], list(n.output), attrs))
    weights: dict[str, np.ndarray] = {}
    for nd in nodes:
        for i in nd.inputs:
            if i in weights:
                continue
            if i in inits:
                weights[i] = np.asarray(inits[i], np.float32)
            elif i + "_reshaped" in produced:
                weights[i] = produced[i + "_reshaped"]
            elif i + "_dequantized" in produced:
                weights[i] = produced[i + "_dequantized"]
    # the data input
    def _shape(vi):
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]

    produced_by_nodes = {o for nd in nodes for o in nd.outputs}
    consumed = {i for nd in nodes for i in nd.inputs}
    data = [vi for vi in g.input if vi.name in consumed and vi.name not in weights
            and vi.name not in produced_by_nodes]
    if len(data) != 1:
        raise ValueError(f"expected one data input, found {[d.name for d in data]}")
    opset = max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    desc = GraphDesc(data[0].name, _shape(data[0]), g.output[0].name, _shape(g.output[0]), opset, nodes, quant)
    return desc, weights


def write_fp32_onnx(src: str, dst: str) -> GraphDesc:
    """Write the float graph of ``src`` with dequantised fp32 initialisers to ``dst`` (IR 10, opset 21, batch
    dimension ``N``). Checked with ``onnx.checker`` (full check, with shape inference)."""
    onnx, helper, numpy_helper = _onnx()
    desc, weights = read_onnx(src)
    nodes = []
    for nd in desc.nodes:
        if nd.op_type == "Constant":
            nodes.append(helper.make_node("Constant", [], nd.outputs, name=nd.name or nd.outputs[0],
                                          value=numpy_helper.from_array(np.asarray(nd.attrs["value"]))))
        else:
            nodes.append(helper.make_node(nd.op_type, nd.inputs, nd.outputs, name=nd.name, **nd.attrs))
    inp = helper.make_tensor_value_info(desc.input_name, onnx.TensorProto.FLOAT, ["N"] + list(desc.input_shape[1:]))
    out = helper.make_tensor_value_info(desc.output_name, onnx.TensorProto.FLOAT, ["N"] + list(desc.output_shape[1:]))
    inits = [numpy_helper.from_array(np.ascontiguousarray(w, np.float32), name) for name, w in weights.items()]
    graph = helper.make_graph(nodes, "sface_fp32", [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", desc.opset)],
                              producer_name="facesearch")
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, dst)
    return desc

"""ISMRMRD XML headers as fastMRI stores them in `ismrmrd_header`: build one, and read back the facts we index.

`build_header` writes every element `fastmri.data.mri_data.SliceDataset._retrieve_metadata` reads (encoded and
recon matrix x/y/z, `kspace_encoding_step_1` limits) plus the scanner facts the benchmark splits on
(`acquisitionSystemInformation/systemFieldStrength_T`, `systemModel`, `systemVendor`, `receiverChannels`).
fastMRI brain convention: encoded x = readout, oversampled twice (640), encoded y = phase encode (320),
recon x = y = 320; the same ratios are used for any matrix size.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

NAMESPACE = "http://www.ismrm.org/ISMRMRD"
_NS = {"i": NAMESPACE}


def _sub(parent: ET.Element, tag: str, text: object | None = None) -> ET.Element:
    el = ET.SubElement(parent, f"{{{NAMESPACE}}}{tag}")
    if text is not None:
        el.text = _fmt(text)
    return el


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return repr(value) if value != int(value) else f"{value:.1f}"
    return str(value)


def _xyz(parent: ET.Element, tag: str, x: object, y: object, z: object) -> None:
    el = _sub(parent, tag)
    _sub(el, "x", x)
    _sub(el, "y", y)
    _sub(el, "z", z)


def _limit(parent: ET.Element, tag: str, minimum: int, maximum: int, center: int) -> None:
    el = _sub(parent, tag)
    _sub(el, "minimum", minimum)
    _sub(el, "maximum", maximum)
    _sub(el, "center", center)


def build_header(*, field_strength_T: float, system_model: str, system_vendor: str,
                 encoded_shape: tuple[int, int], recon_shape: tuple[int, int], n_coils: int,
                 fov_mm: tuple[float, float] | None = None, slice_thickness_mm: float = 5.0,
                 n_slices: int = 1, protocol: dict[str, Any] | None = None) -> str:
    """ISMRMRD XML header (a str) for one Cartesian 2D multi-slice acquisition.

    encoded_shape / recon_shape are (x, y) = (readout, phase encode) matrix sizes, e.g. (640, 320) / (320, 320).
    fov_mm is the recon field of view (x, y); the encoded FOV scales with the matrix ratio (readout oversampling).
    protocol may carry `protocol_name`, `TR`, `TE`, `TI` (ms), `flip_angle_deg`, `sequence_type`.
    """
    enc_x, enc_y = (int(v) for v in encoded_shape)
    rec_x, rec_y = (int(v) for v in recon_shape)
    if min(enc_x, enc_y, rec_x, rec_y) < 1 or n_coils < 1:
        raise ValueError(f"matrix sizes and n_coils must be positive, got encoded {encoded_shape}, "
                         f"recon {recon_shape}, n_coils {n_coils}")
    fov_x, fov_y = (float(v) for v in (fov_mm or (220.0, 220.0)))
    protocol = dict(protocol or {})

    ET.register_namespace("", NAMESPACE)
    root = ET.Element(f"{{{NAMESPACE}}}ismrmrdHeader")
    meas = _sub(root, "measurementInformation")
    _sub(meas, "patientPosition", "HFS")
    _sub(meas, "protocolName", protocol.get("protocol_name", "AX"))

    system = _sub(root, "acquisitionSystemInformation")
    _sub(system, "systemVendor", system_vendor)
    _sub(system, "systemModel", system_model)
    _sub(system, "systemFieldStrength_T", float(field_strength_T))
    _sub(system, "receiverChannels", int(n_coils))
    _sub(system, "institutionName", "ldpm embedded (simulated)")

    conditions = _sub(root, "experimentalConditions")
    _sub(conditions, "H1resonanceFrequency_Hz", int(round(42.577478518e6 * float(field_strength_T))))

    encoding = _sub(root, "encoding")
    space = _sub(encoding, "encodedSpace")
    _xyz(space, "matrixSize", enc_x, enc_y, 1)
    _xyz(space, "fieldOfView_mm", fov_x * enc_x / rec_x, fov_y * enc_y / rec_y, float(slice_thickness_mm))
    space = _sub(encoding, "reconSpace")
    _xyz(space, "matrixSize", rec_x, rec_y, 1)
    _xyz(space, "fieldOfView_mm", fov_x, fov_y, float(slice_thickness_mm))
    _sub(encoding, "trajectory", "cartesian")
    limits = _sub(encoding, "encodingLimits")
    _limit(limits, "kspace_encoding_step_1", 0, enc_y - 1, enc_y // 2)
    _limit(limits, "kspace_encoding_step_2", 0, 0, 0)
    _limit(limits, "average", 0, 0, 0)
    _limit(limits, "slice", 0, max(int(n_slices) - 1, 0), int(n_slices) // 2)
    _limit(limits, "contrast", 0, 0, 0)
    _limit(limits, "phase", 0, 0, 0)
    _limit(limits, "repetition", 0, 0, 0)
    _limit(limits, "set", 0, 0, 0)
    _limit(limits, "segment", 0, 0, 0)

    if any(k in protocol for k in ("TR", "TE", "TI", "flip_angle_deg", "sequence_type")):
        seq = _sub(root, "sequenceParameters")
        for key, tag in (("TR", "TR"), ("TE", "TE"), ("TI", "TI"), ("flip_angle_deg", "flipAngle_deg"),
                         ("sequence_type", "sequence_type")):
            if key in protocol and protocol[key] is not None:
                _sub(seq, tag, float(protocol[key]) if key != "sequence_type" else protocol[key])

    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _find(root: ET.Element, path: str) -> ET.Element | None:
    """Namespaced lookup (the ISMRMRD standard), falling back to un-namespaced XML."""
    el = root.find("./" + "/".join(f"i:{p}" for p in path.split("/")), _NS)
    return el if el is not None else root.find("./" + path)


def _text(root: ET.Element, path: str, *, required: bool) -> str | None:
    el = _find(root, path)
    if el is None or el.text is None or not el.text.strip():
        if required:
            raise ValueError(f"ISMRMRD header has no {path} element; the file's scanner facts cannot be read")
        return None
    return el.text.strip()


def _shape(root: ET.Element, space: str) -> tuple[int, int]:
    base = f"encoding/{space}/matrixSize"
    return int(_text(root, f"{base}/x", required=True)), int(_text(root, f"{base}/y", required=True))


def parse_header(xml: str | bytes) -> dict[str, Any]:
    """Scanner and matrix facts of an ISMRMRD header.

    Returns field_strength_T (float), system_model, system_vendor (str, "unknown" when absent),
    n_coils (int or None), encoded_shape and recon_shape ((x, y) ints), pe_limits ((centre, maximum) of the
    phase-encode lines, or None).
    Raises ValueError naming the element when systemFieldStrength_T or a matrix size is missing.
    """
    if isinstance(xml, (bytes, bytearray)):
        xml = bytes(xml).decode("utf-8", errors="replace")
    xml = str(xml).strip().rstrip("\x00")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ValueError(f"ISMRMRD header is not valid XML ({exc})") from None
    field = _text(root, "acquisitionSystemInformation/systemFieldStrength_T", required=True)
    try:
        field_strength = float(field)
    except ValueError:
        raise ValueError(f"ISMRMRD header: systemFieldStrength_T is '{field}', not a number") from None
    channels = _text(root, "acquisitionSystemInformation/receiverChannels", required=False)
    limits = "encoding/encodingLimits/kspace_encoding_step_1"
    centre, maximum = (_text(root, f"{limits}/{key}", required=False) for key in ("center", "maximum"))
    return {
        "field_strength_T": field_strength,
        "system_model": _text(root, "acquisitionSystemInformation/systemModel", required=False) or "unknown",
        "system_vendor": _text(root, "acquisitionSystemInformation/systemVendor", required=False) or "unknown",
        "n_coils": int(channels) if channels is not None else None,
        "encoded_shape": _shape(root, "encodedSpace"),
        "recon_shape": _shape(root, "reconSpace"),
        # the phase-encode lines acquired: (centre, maximum) of kspace_encoding_step_1, None when absent
        "pe_limits": (int(centre), int(maximum)) if centre is not None and maximum is not None else None,
    }


def acquired_columns(header: dict[str, Any], width: int) -> tuple[int, int]:
    """[left, right) of the phase-encode columns of a width-W raw k-space that hold acquired lines, as fastMRI's
    SliceDataset computes its padding: left = encoded y // 2 − centre, right = left + maximum + 1. Columns outside
    are zero padding (partial Fourier, or a matrix padded to a round size): never sampled by any mask. Without the
    encoding limits, every column."""
    if header.get("pe_limits") is None:
        return 0, width
    centre, maximum = header["pe_limits"]
    left = header["encoded_shape"][1] // 2 - centre
    return max(left, 0), min(left + maximum + 1, width)

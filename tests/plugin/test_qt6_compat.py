"""QGIS 4 / Qt6 readiness: no Qt5-only idioms in the plugin, enums resolved through compat, modules import."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.qgis

PLUGIN = Path(__file__).resolve().parents[2] / "bicorseg_qgis"
# compat.py is the one place allowed to name the legacy enum spellings (as fallbacks).
SOURCES = sorted(
    p for p in PLUGIN.rglob("*.py") if "engine" not in p.relative_to(PLUGIN).parts and p.name != "compat.py"
)

QT5_ONLY = {
    r"\bexec_\(": "exec_() is gone in PyQt6; use exec()",
    r"\bfrom PyQt5\b|\bimport PyQt5\b": "import Qt through qgis.PyQt",
    r"\bQVariant\b": "QVariant is not usable the same way in PyQt6",
    r"\bQgsProcessing\.Type[A-Z]": "use compat (Qgis.ProcessingSourceType on QGIS >= 3.36)",
    r"\.Flag(Advanced|Optional|Hidden|NoThreading)\b": "use compat (Qgis.ProcessingParameterFlag / ...)",
    r"QgsProcessingParameterNumber\.(Integer|Double)\b": "use compat.NUMBER_INTEGER / NUMBER_DOUBLE",
    r"QgsUnitTypes\.Distance[A-Z]": "use compat.DISTANCE_*",
    r"QgsRasterFileWriter\.NoError\b": "use compat.WRITER_SUCCESS",
    r"QgsColorRampShader\.(Interpolated|Discrete|Exact)\b": "use compat.RAMP_INTERPOLATED",
    r"\bQt\.[A-Z][a-z]\w*\b(?!\.)": "unscoped Qt enum; use the scoped form (Qt.AlignmentFlag.AlignLeft)",
    r"\bpyqtSignal\(QString\)": "QString does not exist in PyQt6",
}


def test_the_plugin_sources_are_found():
    names = {p.name for p in SOURCES}
    assert {"plugin.py", "provider.py", "segment_land_cover.py", "styling.py"} <= names


@pytest.mark.parametrize(("pattern", "why"), list(QT5_ONLY.items()))
def test_no_qt5_only_idiom(pattern, why):
    hits = [
        f"{path.relative_to(PLUGIN)}:{number}: {line.strip()}"
        for path in SOURCES
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if re.search(pattern, line) and not line.lstrip().startswith("#")
    ]
    assert not hits, f"{why}:\n" + "\n".join(hits)


def test_compat_resolves_every_enum_on_this_qgis(qgis_app):
    from qgis.core import QgsProcessing, QgsProcessingParameterDefinition

    from bicorseg_qgis import compat

    for name in ("POLYGON_SOURCE", "FLAG_ADVANCED", "NUMBER_INTEGER", "NUMBER_DOUBLE", "FILE_BEHAVIOR_FILE",
                 "RAMP_INTERPOLATED", "DISTANCE_DEGREES", "DISTANCE_METERS", "RASTER_SIZE_CAPABILITY",
                 "WRITER_SUCCESS"):  # fmt: skip
        assert getattr(compat, name) is not None, name
    # On 3.22 the scoped enums do not exist yet, so the values equal the legacy ones.
    assert int(compat.POLYGON_SOURCE) == int(QgsProcessing.TypeVectorPolygon)
    assert int(compat.FLAG_ADVANCED) == int(QgsProcessingParameterDefinition.FlagAdvanced)


def test_compat_prefers_the_scoped_enum_when_qgis_has_it(monkeypatch):
    from bicorseg_qgis import compat

    class ScopedSourceType:
        VectorPolygon = "scoped"

    class FakeQgis:
        ProcessingSourceType = ScopedSourceType

    monkeypatch.setattr(compat, "Qgis", FakeQgis)
    assert compat._scoped_or_legacy("ProcessingSourceType", "VectorPolygon", object(), "unused") == "scoped"


def test_every_plugin_module_imports(qgis_app):
    for path in [*SOURCES, PLUGIN / "compat.py"]:
        module = ".".join(path.relative_to(PLUGIN.parent).with_suffix("").parts)
        importlib.import_module(module.removesuffix(".__init__"))

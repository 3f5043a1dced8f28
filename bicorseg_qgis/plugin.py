"""The plugin object: registers the Processing provider (also without a GUI, e.g. in qgis_process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import QgsApplication, QgsSettings
from qgis.PyQt.QtCore import QCoreApplication, QTranslator

from .provider import BiCoRSegProvider

I18N_DIR = Path(__file__).resolve().parent / "i18n"


def load_translator(locale: str | None = None) -> QTranslator | None:
    """Install the translation for the user's QGIS locale if the plugin ships one (``i18n/bicorseg_qgis_xx.qm``)."""
    locale = (locale or str(QgsSettings().value("locale/userLocale", "") or ""))[:2]
    qm = I18N_DIR / f"bicorseg_qgis_{locale}.qm"
    if not locale or not qm.is_file():
        return None
    translator = QTranslator()
    if not translator.load(str(qm)):
        return None
    QCoreApplication.installTranslator(translator)
    return translator


class BiCoRSegPlugin:
    """Registers :class:`BiCoRSegProvider` in ``initProcessing`` and removes it in ``unload``."""

    def __init__(self, iface: Any) -> None:
        self.iface = iface
        self.provider: BiCoRSegProvider | None = None
        self.translator = load_translator()

    def initProcessing(self) -> None:
        """Add the provider; qgis_process calls only this hook, the desktop calls it from initGui too."""
        if self.provider is not None:
            return
        self.provider = BiCoRSegProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        """Desktop start-up: the plugin adds no widgets of its own, only the Processing provider."""
        self.initProcessing()

    def unload(self) -> None:
        """Remove the provider (plugin unloaded or reloaded) and the translation."""
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        if self.translator is not None:
            QCoreApplication.removeTranslator(self.translator)
            self.translator = None

"""The plugin object: registers the Processing provider (also without a GUI, e.g. in qgis_process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import Qgis, QgsApplication, QgsSettings
from qgis.PyQt.QtCore import QCoreApplication, QTranslator
from qgis.PyQt.QtWidgets import QPushButton

from .algorithms.base import tr
from .dependencies import missing_modules
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
        self.dependency_message: Any = None

    def initProcessing(self) -> None:
        """Add the provider; qgis_process calls only this hook, the desktop calls it from initGui too."""
        if self.provider is not None:
            return
        self.provider = BiCoRSegProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        """Desktop start-up: the Processing provider, and a message bar offering the installer when packages lack."""
        self.initProcessing()
        self.offer_dependency_install()

    def offer_dependency_install(self) -> None:
        """When needed packages are missing, a message bar with an Install button (never a dialog on start-up).

        The button opens ``bicorseg:installdependencies``, whose log shows pip's output and which can be canceled.
        """
        missing = missing_modules()
        if not missing or self.iface is None:
            return
        bar = self.iface.messageBar()
        message = bar.createMessage(
            "BiCoR-Seg",
            tr("Python packages missing: {missing}. Install them into this QGIS profile?").format(
                missing=", ".join(missing)
            ),
        )
        button = QPushButton(tr("Install"), message)
        button.setObjectName("bicorsegInstallDependencies")
        button.clicked.connect(self.open_installer)
        message.layout().addWidget(button)
        self.dependency_message = bar.pushWidget(message, Qgis.MessageLevel.Warning)

    def open_installer(self) -> None:
        """Open the Install dependencies dialog (profile ``cpu`` preselected) and drop the message bar."""
        import processing

        if self.dependency_message is not None:
            self.iface.messageBar().popWidget(self.dependency_message)
            self.dependency_message = None
        processing.execAlgorithmDialog("bicorseg:installdependencies", {"PROFILE": "cpu"})

    def unload(self) -> None:
        """Remove the provider (plugin unloaded or reloaded) and the translation."""
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        if self.translator is not None:
            QCoreApplication.removeTranslator(self.translator)
            self.translator = None

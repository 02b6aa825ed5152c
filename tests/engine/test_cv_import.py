"""opencv-python beside PySide6: importing cv2 through the engine leaves Qt's variables alone."""

import os
import subprocess
import sys

CHECK = r"""
import os
os.environ.pop("QT_QPA_PLATFORM_PLUGIN_PATH", None)
os.environ.pop("QT_QPA_FONTDIR", None)
os.environ["QT_QPA_PLATFORM"] = "offscreen"
order = sys.argv[1]
if order == "qt-first":
    from PySide6.QtWidgets import QApplication
    from itkm_engine.cv import cv2
else:
    from itkm_engine.cv import cv2
    from PySide6.QtWidgets import QApplication
assert "QT_QPA_PLATFORM_PLUGIN_PATH" not in os.environ, os.environ.get("QT_QPA_PLATFORM_PLUGIN_PATH")
assert "QT_QPA_FONTDIR" not in os.environ
app = QApplication([])
from PySide6.QtWidgets import QLabel
w = QLabel("cv2 %s" % cv2.__version__)
w.show()
app.processEvents()
img = cv2.resize(__import__("numpy").zeros((8, 8, 3), "uint8"), (4, 4))
print("ok", app.platformName(), img.shape)
"""


def _run(order: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_QPA_PLATFORM_PLUGIN")}
    p = subprocess.run([sys.executable, "-c", "import sys\n" + CHECK, order], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_cv2_then_qt_and_qt_then_cv2_both_start_an_offscreen_app():
    for order in ("qt-first", "cv2-first"):
        out = _run(order)
        assert out.startswith("ok offscreen (4, 4, 3)"), out


def test_user_set_qt_variables_survive_the_cv2_import():
    code = ("import os\nos.environ['QT_QPA_FONTDIR'] = '/my/fonts'\n"
            "from itkm_engine.cv import cv2\nprint(os.environ['QT_QPA_FONTDIR'], 'QT_QPA_PLATFORM_PLUGIN_PATH' in os.environ)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QT_QPA_PLATFORM_PLUGIN")}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["/my/fonts", "False"]

"""``itkm-app [WORKSPACE] [--demo] [--screenshot DIR]``: the desktop app's entry point.

Only Qt, pyqtgraph and light engine modules are imported here, so the window shows in about a
second; torch and UMAP load in the background (see ``main_window.warm_up``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

_T0 = time.monotonic()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="itkm-app",
        description="ITKM Studio: find the same person across many cameras, without labels.")
    ap.add_argument("workspace", nargs="?", help="workspace folder to open (default: the last one)")
    ap.add_argument("--demo", action="store_true",
                    help="open the demo camera set (made in your data folder on first use)")
    ap.add_argument("--screenshot", metavar="DIR",
                    help="render each main view of the workspace to DIR/<view>.png and exit")
    ap.add_argument("--theme", choices=("system", "light", "dark"), help="appearance (default: the saved choice)")
    ap.add_argument("--size", default="1280x800", help="window size for --screenshot (default 1280x800)")
    ap.add_argument("--dev", action="store_true", help="developer options (the tiny training preset)")
    ap.add_argument("--settings", metavar="INI", help="use this settings file instead of the user's")
    ap.add_argument("--demo-identities", type=int, default=60, help=argparse.SUPPRESS)
    ap.add_argument("--exit-after-show", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-warm-up", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads (torch, numba) sleep when idle instead of spinning for milliseconds after
    # each parallel region: spinning threads take the CPU the window needs.  Read when OpenMP
    # loads, i.e. before torch is imported (it is, lazily, in a background job).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from . import errors, theme
    from .main_window import APP_NAME, MainWindow
    from .settings import APPLICATION, ORGANIZATION, Settings

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "itkm-app"])
    app.setApplicationName(APPLICATION)
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationDisplayName(APP_NAME)
    settings_path = args.settings
    if args.screenshot and not settings_path:
        # screenshots never read or change the user's window layout and preferences
        settings_path = os.path.join(tempfile.mkdtemp(prefix="itkm-shot-"), "settings.ini")
    settings = Settings(settings_path)
    theme.apply_theme(app, args.theme or settings.get("view/theme", "system", str))
    errors.install_excepthook()
    if args.screenshot:
        errors.MODAL = False
    window = MainWindow(settings, dev=args.dev or args.screenshot is not None, warm=not args.no_warm_up)
    if args.screenshot:
        # nobody is there to answer "workspace in use -- open read-only?": a screenshot only reads
        window.ask_open_readonly = lambda message: True
    if args.screenshot:
        w, _, h = args.size.partition("x")
        window.resize(int(w), int(h))
    window.show()
    if not args.screenshot:
        # on the screen, status bar included, whatever the saved size and the screen (1024x640 too)
        window.fit_to_screen()
        QTimer.singleShot(0, window.fit_to_screen)  # again once the window system has sized its frame
    if args.exit_after_show:
        app.processEvents()
        print(f"window shown after {time.monotonic() - _T0:.2f} s", flush=True)
        window.close()
        return 0

    if args.demo:
        window.open_demo(identities=args.demo_identities)
    elif args.workspace:
        window.open_workspace(args.workspace)
    elif not args.screenshot:
        last = settings.last_workspace()
        if last and (Path(last) / "itkm.sqlite").is_file():
            window.open_workspace(last)

    exit_code = {"code": 0}
    if args.screenshot:
        from .screenshot import capture

        def shoot() -> None:
            try:
                w, _, h = args.size.partition("x")
                files = capture(window, args.screenshot, size=(int(w), int(h)))
                print("\n".join(str(f) for f in files), flush=True)
            except Exception as exc:  # noqa: BLE001 - report and exit non-zero
                import traceback

                traceback.print_exc()
                print(f"screenshot failed: {exc}", file=sys.stderr)
                exit_code["code"] = 1
            window.jobs.cancel_all()
            window.close()
            app.exit(exit_code["code"])

        QTimer.singleShot(0, shoot)
    code = app.exec()
    errors.uninstall_excepthook()
    return code or exit_code["code"]


if __name__ == "__main__":
    sys.exit(main())

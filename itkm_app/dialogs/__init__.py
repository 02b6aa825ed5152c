"""The app's dialogs (beyond message boxes): one module each."""

from .add_folders import AddFoldersDialog
from .rejects import RejectsDialog

__all__ = ["AddFoldersDialog", "RejectsDialog"]

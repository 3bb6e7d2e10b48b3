"""The error raised for bad input data: it names the file, the line and the column."""

from __future__ import annotations


def one_line(error: BaseException) -> str:
  """``error`` as one line: the file it names, its message, no newlines."""
  text = " ".join(str(error).split())
  if isinstance(error, OSError) and error.filename and str(error.filename) not in text:
    text = f"{error.filename}: {text}"
  return text or type(error).__name__


class DataError(ValueError):
  """Bad input data or a bad store.

  The message starts with ``PATH:LINE:`` (1-based line, counting a header line) when
  the problem is in a file, and names the column (1-based index and name) when it is in
  one column. The parts are also kept as attributes for programs.
  """

  def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
               column: int | None = None, column_name: str | None = None):
    self.path, self.line, self.column, self.column_name = path, line, column, column_name
    where = ""
    if path is not None:
      where = f"{path}:{line}: " if line is not None else f"{path}: "
    if column is not None:
      name = f" ({column_name!r})" if column_name is not None else ""
      where += f"column {column}{name}: "
    elif column_name is not None:
      where += f"column {column_name!r}: "
    self._message = message
    super().__init__(where + message)

  def __reduce__(self):  # keeps the parts when raised in a preprocessing worker.
    return (_rebuild, (self._message, self.path, self.line, self.column, self.column_name))


def _rebuild(message, path, line, column, column_name):
  return DataError(message, path=path, line=line, column=column, column_name=column_name)

"""A multipart/form-data body parsed as it arrives: the `file` part goes straight to the file
store through a Receiver (which enforces the size and line limits), the small fields are kept.
Nothing of the file is held in memory beyond the chunk being parsed."""

from __future__ import annotations

from python_multipart.multipart import MultipartParser, parse_options_header

from batchq.errors import InvalidRequest
from batchq.service.files import Receiver

FIELD_LIMIT = 1024  # bytes of a plain form field (purpose is a short word)


class MultipartUpload:
    def __init__(self, content_type: str | None, receiver: Receiver):
        kind, params = parse_options_header(content_type)
        if kind != b"multipart/form-data" or not params.get(b"boundary"):
            raise InvalidRequest("send the file as multipart/form-data, with the fields "
                                 "'file' and 'purpose'", "file")
        self.receiver = receiver
        self.fields: dict[str, bytes] = {}
        self.filename: str | None = None  # set once the file part is seen
        self._part: str | None = None
        self._field = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}
        self.parser = MultipartParser(params[b"boundary"], callbacks={
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
        })

    def feed(self, chunk: bytes) -> None:
        self.parser.write(chunk)

    def finish(self) -> None:
        self.parser.finalize()
        if self.filename is None:
            raise InvalidRequest("the upload has no 'file' part", "file")

    def field(self, name: str) -> str | None:
        value = self.fields.get(name)
        return None if value is None else value.decode("utf-8", "replace")

    # ------------------------------------------------------------ parser callbacks

    def _part_begin(self) -> None:
        self._headers = {}
        self._part = None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition"))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name == "file":
            if self.filename is not None:
                raise InvalidRequest("the upload has more than one 'file' part", "file")
            self.filename = params.get(b"filename", b"").decode("utf-8", "replace")
        self._part = name

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "file":
            self.receiver.write(data[start:end])
        elif self._part is not None:
            value = self.fields.get(self._part, b"") + data[start:end]
            if len(value) > FIELD_LIMIT:
                raise InvalidRequest(f"form field {self._part!r} is too long", self._part)
            self.fields[self._part] = value

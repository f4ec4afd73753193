"""Byte offsets of each image's feature blob inside an uncompressed shard.

PyArrow cannot read below a row group, so a random `get` through it decodes every image of
the group. But an uncompressed, PLAIN-encoded, required BYTE_ARRAY column stores each value
as `<int32 length><bytes>` inside data pages: once the page headers are walked, every blob
is a fixed byte range of the file, and `np.frombuffer(mmap, offset=...)` is a true zero-copy
read (bench/bench_features.py: ~100x faster than decoding a 32-image row group).

Only Parquet data-page headers are parsed (Thrift compact protocol); any layout this does
not recognise (compression, dictionary pages, v2 pages, levels) returns None and the store
falls back to PyArrow. tests/test_feature_store.py checks this path against PyArrow's.
"""

from __future__ import annotations

import mmap
import struct

import numpy as np
import pyarrow.parquet as pq

_DATA_PAGE = 0
_STOP, _TRUE, _FALSE, _I8, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(13)


class _Compact:
    """Just enough of Thrift's compact protocol to read a PageHeader."""

    def __init__(self, buf, pos: int):
        self.buf, self.pos = buf, pos

    def byte(self) -> int:
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def skip(self, ftype: int) -> None:
        if ftype in (_TRUE, _FALSE):
            return
        if ftype == _I8:
            self.pos += 1
        elif ftype in (_I16, _I32, _I64):
            self.varint()
        elif ftype == _DOUBLE:
            self.pos += 8
        elif ftype == _BINARY:
            self.pos += self.varint()
        elif ftype in (_LIST, _SET):
            head = self.byte()
            size = head >> 4 if head >> 4 != 15 else self.varint()
            for _ in range(size):
                self.skip(head & 0x0F)
        elif ftype == _MAP:
            size = self.varint()
            if size:
                kv = self.byte()
                for _ in range(size):
                    self.skip(kv >> 4)
                    self.skip(kv & 0x0F)
        elif ftype == _STRUCT:
            self.struct(lambda fid, t: self.skip(t))
        else:
            raise ValueError(f"unknown thrift type {ftype}")

    def struct(self, on_field) -> None:
        last = 0
        while True:
            head = self.byte()
            ftype = head & 0x0F
            if ftype == _STOP:
                return
            delta = head >> 4
            fid = last + delta if delta else self.zigzag()
            last = fid
            on_field(fid, ftype)


def _page_header(buf, pos: int) -> tuple[dict, int]:
    """Parse a PageHeader at `pos`; returns ({type, compressed_size, num_values, encoding}, data start)."""
    reader = _Compact(buf, pos)
    header: dict = {}

    def data_page_field(fid: int, ftype: int) -> None:
        if fid == 1 and ftype == _I32:
            header["num_values"] = reader.zigzag()
        elif fid == 2 and ftype == _I32:
            header["encoding"] = reader.zigzag()
        else:
            reader.skip(ftype)

    def field(fid: int, ftype: int) -> None:
        if fid == 1 and ftype == _I32:
            header["type"] = reader.zigzag()
        elif fid == 3 and ftype == _I32:
            header["compressed_size"] = reader.zigzag()
        elif fid == 5 and ftype == _STRUCT:
            reader.struct(data_page_field)
        else:
            reader.skip(ftype)

    reader.struct(field)
    return header, reader.pos


def blob_offsets(pf: pq.ParquetFile, buf: mmap.mmap, column: str) -> np.ndarray | None:
    """(num_rows, 2) int64 array of (byte offset, byte length) of each value, or None."""
    meta = pf.metadata
    index = pf.schema_arrow.get_field_index(column)
    if index < 0 or pf.schema.column(index).max_definition_level != 0:
        return None
    out = np.empty((meta.num_rows, 2), dtype=np.int64)
    row = 0
    unpack = struct.Struct("<i").unpack_from
    for g in range(meta.num_row_groups):
        chunk = meta.row_group(g).column(index)
        if chunk.compression != "UNCOMPRESSED" or chunk.has_dictionary_page:
            return None
        pos, end, remaining = chunk.data_page_offset, chunk.data_page_offset + chunk.total_compressed_size, chunk.num_values
        while remaining > 0 and pos < end:
            header, data = _page_header(buf, pos)
            if header.get("type") != _DATA_PAGE or header.get("encoding", 0) != 0:  # PLAIN = 0
                return None
            n = header["num_values"]
            p = data
            for _ in range(n):
                length = unpack(buf, p)[0]
                out[row] = (p + 4, length)
                p += 4 + length
                row += 1
            if p != data + header["compressed_size"]:
                return None
            pos, remaining = p, remaining - n
        if remaining:
            return None
    return out if row == meta.num_rows else None


def list_value_regions(pf: pq.ParquetFile, buf: mmap.mmap, column: str) -> np.ndarray | None:
    """(num_row_groups, 2) int64 of (byte offset, byte length) of a list column's values.

    A flat list column's PLAIN values sit contiguously after the repetition and definition
    levels of its data page; with one data page per row-group chunk (the small per-box
    columns are a few KB per group), row r's values start at the sum of the earlier rows'
    lengths. None when the chunk has several pages or any layout this does not handle.
    """
    meta = pf.metadata
    index = pf.schema_arrow.get_field_index(column)
    if index < 0:
        return None
    leaf = pf.schema.column(index)
    unpack = struct.Struct("<i").unpack_from
    out = np.empty((meta.num_row_groups, 2), dtype=np.int64)
    for g in range(meta.num_row_groups):
        chunk = meta.row_group(g).column(index)
        if chunk.compression != "UNCOMPRESSED" or chunk.has_dictionary_page:
            return None
        header, data = _page_header(buf, chunk.data_page_offset)
        end = data + header.get("compressed_size", -1)
        if (header.get("type") != _DATA_PAGE or header.get("encoding", 0) != 0
                or end != chunk.data_page_offset + chunk.total_compressed_size):
            return None  # not exactly one PLAIN v1 data page in this chunk
        pos = data
        for max_level in (leaf.max_repetition_level, leaf.max_definition_level):
            if max_level > 0:  # v1 pages prefix RLE levels with their byte length
                pos += 4 + unpack(buf, pos)[0]
        out[g] = (pos, end - pos)
    return out

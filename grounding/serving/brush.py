"""Label Studio's brush RLE: the mask format of its ``BrushLabels`` regions (not COCO RLE).

Label Studio stores a brush region as the RGBA bytes of the mask image (``h · w · 4`` values, the
mask in every channel — its own decoder reads channel 3) packed with thi.ng's ``rle-pack`` bit
stream: a 32-bit value count, the word size − 1 in 5 bits, four run-length field widths − 1 in 4
bits each, then chunks of ``[1 bit: repeat?][2 bits: which width][count − 1 in that width]`` followed
by one word (a repeated run) or ``count`` words (literals). Big-endian bit order; the stream is
zero-padded to whole bytes and sent as a list of ints (``value.rle``).

We only write repeat chunks (a binary mask is runs), 8-bit words and widths 3 / 4 / 8 / 16 bits;
``decode`` reads any stream the format allows (tests check ours against Label Studio's own
``label_studio_sdk.converter.brush.decode_rle``).
"""

from __future__ import annotations

import numpy as np

_WIDTHS = (3, 4, 8, 16)  # run-length field widths (bits), the four the header announces


def encode(mask: np.ndarray) -> list[int]:
    """bool ``[H, W]`` → Label Studio brush RLE bytes (a list of ints 0–255)."""
    values = np.repeat(np.asarray(mask, dtype=bool).ravel(), 4).astype(np.uint8) * 255
    bits: list[str] = [format(values.size, "032b"), format(8 - 1, "05b")]
    bits += [format(w - 1, "04b") for w in _WIDTHS]
    if values.size:
        edges = np.flatnonzero(np.diff(values)) + 1
        starts = np.concatenate([[0], edges])
        lengths = np.diff(np.concatenate([starts, [values.size]]))
        for start, length in zip(starts.tolist(), lengths.tolist()):
            word = format(int(values[start]), "08b")
            while length > 0:  # runs longer than the widest field are split
                count = min(length, 1 << _WIDTHS[-1])
                k = next(i for i, w in enumerate(_WIDTHS) if count - 1 < (1 << w))
                bits.append("1" + format(k, "02b") + format(count - 1, f"0{_WIDTHS[k]}b") + word)
                length -= count
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return np.packbits(np.frombuffer(stream.encode(), dtype=np.uint8) - ord("0")).tolist()


def decode(rle: list[int], height: int, width: int) -> np.ndarray:
    """Label Studio brush RLE → bool ``[H, W]`` (channel 3 of the RGBA values, as Label Studio reads it)."""
    bits = np.unpackbits(np.asarray(rle, dtype=np.uint8))
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        v = 0
        for b in bits[pos : pos + n]:
            v = (v << 1) | int(b)
        pos += n
        return v

    num = read(32)
    word = read(5) + 1
    widths = [read(4) + 1 for _ in range(4)]
    out = np.zeros(num, dtype=np.uint32)
    i = 0
    while i < num:
        repeat = read(1)
        j = i + 1 + read(widths[read(2)])
        if repeat:
            out[i:j] = read(word)
        else:
            for k in range(i, j):
                out[k] = read(word)
        i = j
    if num != height * width * 4:
        raise ValueError(f"brush RLE holds {num} values, not {height} × {width} × 4")
    return out.reshape(height, width, 4)[:, :, 3] > 0

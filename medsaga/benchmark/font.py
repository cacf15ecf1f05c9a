"""A 5 × 9 bitmap font for chart labels: printable ASCII and ``×``, drawn into numpy RGB arrays.

Each glyph is 9 rows of 5 pixels, stored as 9 two-digit hex numbers (one per row, top first; bit 4
is the leftmost pixel): 7 rows from the baseline up, in the manner of the classic character-LCD
ROMs, and 2 rows below it for the descenders of g, j, p, q, y and the comma. Text is drawn at an
integer ``scale`` (each font pixel a ``scale × scale`` block) with one blank column between
glyphs; characters without a glyph are drawn as ``?``.
"""

from __future__ import annotations

import numpy as np

GLYPH_WIDTH = 5
GLYPH_HEIGHT = 9
SPACING = 1  # blank font columns between glyphs

_GLYPHS_HEX: dict[str, str] = {
    ' ': "000000000000000000", '!': "040404040400040000", '"': "0A0A0A000000000000", '#': "0A0A1F0A1F0A0A0000",
    '$': "040F140E051E040000", '%': "181902040813030000", '&': "0C12140815120D0000", "'": "040408000000000000",
    '(': "020408080804020000", ')': "080402020204080000", '*': "0004150E1504000000", '+': "0004041F0404000000",
    ',': "00000000000C0C0408", '-': "0000001F0000000000", '.': "00000000000C0C0000", '/': "000102040810000000",
    '0': "0E11131519110E0000", '1': "040C040404040E0000", '2': "0E11010204081F0000", '3': "1F02040201110E0000",
    '4': "02060A121F02020000", '5': "1F101E0101110E0000", '6': "0608101E11110E0000", '7': "1F0102040808080000",
    '8': "0E11110E11110E0000", '9': "0E11110F01020C0000", ':': "000C0C000C0C000000", ';': "000C0C00000C0C0408",
    '<': "020408100804020000", '=': "00001F001F00000000", '>': "080402010204080000", '?': "0E1101020400040000",
    '@': "0E11010D15150E0000", 'A': "0E1111111F11110000", 'B': "1E11111E11111E0000", 'C': "0E11101010110E0000",
    'D': "1C12111111121C0000", 'E': "1F10101E10101F0000", 'F': "1F10101E1010100000", 'G': "0E11101711110F0000",
    'H': "1111111F1111110000", 'I': "0E04040404040E0000", 'J': "0702020202120C0000", 'K': "111214181412110000",
    'L': "1010101010101F0000", 'M': "111B15151111110000", 'N': "111119151311110000", 'O': "0E11111111110E0000",
    'P': "1E11111E1010100000", 'Q': "0E11111115120D0000", 'R': "1E11111E1412110000", 'S': "0F10100E01011E0000",
    'T': "1F0404040404040000", 'U': "1111111111110E0000", 'V': "11111111110A040000", 'W': "1111111515150A0000",
    'X': "11110A040A11110000", 'Y': "1111110A0404040000", 'Z': "1F01020408101F0000", '[': "0E08080808080E0000",
    '\\': "001008040201000000", ']': "0E02020202020E0000", '^': "040A11000000000000", '_': "0000000000001F0000",
    '`': "080402000000000000", 'a': "00000E010F110F0000", 'b': "1010161911111E0000", 'c': "00000E1010110E0000",
    'd': "01010D1311110F0000", 'e': "00000E111F100E0000", 'f': "0609081C0808080000", 'g': "00000F1111110F010E",
    'h': "101016191111110000", 'i': "04000C0404040E0000", 'j': "02000602020202120C", 'k': "101012141814120000",
    'l': "0C04040404040E0000", 'm': "00001A151511110000", 'n': "000016191111110000", 'o': "00000E1111110E0000",
    'p': "00001E1111111E1010", 'q': "00000F1111110F0101", 'r': "000016191010100000", 's': "00000E100E011E0000",
    't': "08081C080809060000", 'u': "0000111111130D0000", 'v': "00001111110A040000", 'w': "0000111115150A0000",
    'x': "0000110A040A110000", 'y': "0000111111110F010E", 'z': "00001F0204081F0000", '{': "020404080404020000",
    '|': "040404040404040000", '}': "080404020404080000", '~': "000008150200000000", '×': "00110A040A11000000",
}


def _decode(hex_rows: str) -> np.ndarray:
    rows = [int(hex_rows[i:i + 2], 16) for i in range(0, 2 * GLYPH_HEIGHT, 2)]
    return np.array([[(row >> (GLYPH_WIDTH - 1 - col)) & 1 for col in range(GLYPH_WIDTH)] for row in rows], bool)


GLYPHS: dict[str, np.ndarray] = {char: _decode(bits) for char, bits in _GLYPHS_HEX.items()}


def text_width(text: str, scale: int = 1) -> int:
    """Pixels that :func:`draw_text` covers horizontally."""
    return max(0, len(text) * (GLYPH_WIDTH + SPACING) - SPACING) * scale


def text_height(scale: int = 1) -> int:
    return GLYPH_HEIGHT * scale


def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """The text as a boolean mask ``(9·scale, text_width)``: True where ink is."""
    mask = np.zeros((GLYPH_HEIGHT, max(0, len(text) * (GLYPH_WIDTH + SPACING) - SPACING)), bool)
    for index, char in enumerate(text):
        left = index * (GLYPH_WIDTH + SPACING)
        mask[:, left:left + GLYPH_WIDTH] = GLYPHS.get(char, GLYPHS["?"])
    return mask.repeat(scale, axis=0).repeat(scale, axis=1)


def draw_text(image: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int], scale: int = 1) -> int:
    """Draw ``text`` with its top-left corner at ``(x, y)`` into ``image`` ``(H, W, 3)`` uint8, in place.

    Whatever falls outside the image is clipped. Returns the x just past the text.
    """
    mask = text_mask(text, scale)
    height, width = image.shape[:2]
    top, left = max(y, 0), max(x, 0)
    bottom, right = min(y + mask.shape[0], height), min(x + mask.shape[1], width)
    if bottom > top and right > left:
        region = mask[top - y:bottom - y, left - x:right - x]
        image[top:bottom, left:right][region] = colour
    return x + mask.shape[1]

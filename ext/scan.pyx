# The native scanner, included by ext/_native.pyx.
#
# A line-by-line twin of engine/scan/_scan_py.py, whose module docstring states
# every choice; keep the two in step (tests/scan/ compares them on every input).
# The walk reads a const uint8_t* over the caller's buffer and creates no
# Python object until a value is returned; only non-ASCII text, the transfer
# syntax table, inflation and Number of Frames go back to engine.scan._common.

from cpython.buffer cimport PyBUF_SIMPLE, PyObject_GetBuffer, PyBuffer_Release
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdint cimport int16_t, int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

from engine.attributes import SCANNED
from engine.errors import MalformedDicomError, NotDicomError
from engine.scan import _common
from engine.scan.result import PixelSpan, ScanResult

cdef enum:
    N_SCANNED_MAX = 64  # room for engine.attributes.SCANNED in the walk's C arrays

cdef enum:
    ITEM = 0xFFFEE000  # PS3.5 7.5: Item
    ITEM_DELIMITER = 0xFFFEE00D  # Item Delimitation Item
    SEQUENCE_DELIMITER = 0xFFFEE0DD  # Sequence Delimitation Item
    PIXEL_DATA = 0x7FE00010
    EXTENDED_OFFSET_TABLE = 0x7FE00001
    SPECIFIC_CHARACTER_SET = 0x00080005

cdef uint32_t UNDEFINED = 0xFFFFFFFF
cdef uint16_t VR_UN = (ord("U") << 8) | ord("N")
cdef uint16_t VR_UI = (ord("U") << 8) | ord("I")
cdef int MAX_DEPTH = _common.MAX_DEPTH

# VR kinds, indexed by (first letter - 'A') * 26 + (second letter - 'A').
cdef enum:
    K_KNOWN = 1
    K_LONG = 2  # PS3.5 7.1.2: reserved 2 bytes and a 32-bit length
    K_TEXT = 4
    K_KEEP_LEADING = 8  # LT, ST, UT: leading spaces are significant
    K_NUMBER = 16

cdef uint8_t VR_KIND[676]
cdef uint8_t VR_SIZE[676]  # value size of the binary number VRs
cdef char VR_CODE[676]  # struct format character of the binary number VRs
cdef dict VR_STR = {}  # VR code -> str

# SCANNED, sorted by tag, as C arrays for the walk.
cdef int N_SCANNED = len(SCANNED)
cdef uint32_t SCANNED_TAG[N_SCANNED_MAX]
cdef uint16_t SCANNED_VR[N_SCANNED_MAX]
cdef list SCANNED_KEYWORD = [a.keyword for a in SCANNED]
cdef dict FMI_KEYWORDS = dict(_common.FMI_KEYWORDS)
cdef object _transfer_syntax_info = _common.transfer_syntax_info
cdef object _decode_text = _common.decode_text


cdef inline int vr_index(uint16_t vr) noexcept nogil:
    return ((vr >> 8) - 65) * 26 + ((vr & 0xFF) - 65)


cdef uint16_t vr_code(str vr):
    return (ord(vr[0]) << 8) | ord(vr[1])


cdef void _init_tables() except *:
    cdef int i
    cdef uint16_t code
    all_vrs = _common.LONG_VRS | _common.TEXT_VRS | _common.NUMBER_VRS.keys() | {"AT"}
    for vr in all_vrs:
        code = vr_code(vr)
        i = vr_index(code)
        VR_STR[code] = vr
        VR_KIND[i] = K_KNOWN
        if vr in _common.LONG_VRS:
            VR_KIND[i] |= K_LONG
        if vr in _common.TEXT_VRS:
            VR_KIND[i] |= K_TEXT
        if vr in _common.KEEP_LEADING_VRS:
            VR_KIND[i] |= K_KEEP_LEADING
        if vr in _common.NUMBER_VRS:
            VR_KIND[i] |= K_NUMBER
            VR_CODE[i] = ord(_common.NUMBER_VRS[vr])
            VR_SIZE[i] = {"H": 2, "h": 2, "I": 4, "i": 4, "f": 4, "d": 8}[_common.NUMBER_VRS[vr]]
    assert N_SCANNED <= N_SCANNED_MAX
    for i, attr in enumerate(SCANNED):
        SCANNED_TAG[i] = attr.tag
        SCANNED_VR[i] = vr_code(attr.vr)


_init_tables()


cdef inline bint is_vr(uint8_t b0, uint8_t b1) noexcept nogil:
    return 0x41 <= b0 <= 0x5A and 0x41 <= b1 <= 0x5A


cdef inline uint8_t kind_of(uint16_t vr) noexcept nogil:
    if vr == 0 or not is_vr(vr >> 8, vr & 0xFF):
        return 0
    return VR_KIND[vr_index(vr)]


cdef inline uint16_t rd16(const uint8_t* p, bint little) noexcept nogil:
    if little:
        return p[0] | (p[1] << 8)
    return (p[0] << 8) | p[1]


cdef inline uint32_t rd32(const uint8_t* p, bint little) noexcept nogil:
    if little:
        return p[0] | (p[1] << 8) | (p[2] << 16) | (<uint32_t>p[3] << 24)
    return (<uint32_t>p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]


cdef inline uint64_t rd64(const uint8_t* p, bint little) noexcept nogil:
    if little:
        return rd32(p, 1) | (<uint64_t>rd32(p + 4, 1) << 32)
    return (<uint64_t>rd32(p, 0) << 32) | rd32(p + 4, 0)


cdef str _tag_str(uint32_t tag):
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


cdef object _past_end(Py_ssize_t pos, uint32_t length):
    return MalformedDicomError(pos, f"value of length {length} runs past the end of the buffer")


cdef struct Header:
    uint32_t tag
    uint16_t vr  # the two VR bytes, 0 when the element has none (implicit)
    uint32_t length
    Py_ssize_t value  # first byte of the value


cdef struct Buf:
    const uint8_t* p
    Py_ssize_t n


cdef int _header(Buf* b, Py_ssize_t pos, bint little, bint implicit, Header* h) except -1:
    # The caller has checked that 8 bytes are there.
    cdef const uint8_t* p = b.p + pos
    cdef uint16_t group = rd16(p, little)
    h.tag = (<uint32_t>group << 16) | rd16(p + 2, little)
    if implicit or group == 0xFFFE or not is_vr(p[4], p[5]):
        h.vr = 0
        h.length = rd32(p + 4, little)
        h.value = pos + 8
        return 0
    h.vr = (p[4] << 8) | p[5]
    if VR_KIND[vr_index(h.vr)] & K_LONG:
        if b.n - pos < 12:
            raise MalformedDicomError(pos, "truncated element header")
        h.length = rd32(p + 8, little)
        h.value = pos + 12
    else:
        h.length = rd16(p + 6, little)
        h.value = pos + 8
    return 0


cdef Py_ssize_t _skip_items(
    Buf* b, Py_ssize_t pos, bint little, bint implicit, int depth, Py_ssize_t start
) except -1:
    cdef uint32_t tag, length
    cdef Py_ssize_t n = b.n
    if depth > MAX_DEPTH:
        raise MalformedDicomError(start, "nesting too deep")
    while True:
        if pos >= n:
            raise MalformedDicomError(start, "no Sequence Delimitation Item before end of buffer")
        if n - pos < 8:
            raise MalformedDicomError(pos, "truncated item header")
        tag = (<uint32_t>rd16(b.p + pos, little) << 16) | rd16(b.p + pos + 2, little)
        length = rd32(b.p + pos + 4, little)
        if tag == SEQUENCE_DELIMITER:
            return pos + 8
        if tag != ITEM:
            raise MalformedDicomError(pos, f"expected an Item, found {_tag_str(tag)}")
        if length == UNDEFINED:
            pos = _skip_dataset(b, pos + 8, little, implicit, depth, pos)
        elif length > n - pos - 8:
            raise _past_end(pos, length)
        else:
            pos += 8 + length


cdef Py_ssize_t _skip_dataset(
    Buf* b, Py_ssize_t pos, bint little, bint implicit, int depth, Py_ssize_t start
) except -1:
    cdef Header h
    cdef bint un
    cdef Py_ssize_t n = b.n
    while True:
        if pos >= n:
            raise MalformedDicomError(start, "no Item Delimitation Item before end of buffer")
        if n - pos < 8:
            raise MalformedDicomError(pos, "truncated element header")
        _header(b, pos, little, implicit, &h)
        if h.tag == ITEM_DELIMITER:
            return h.value
        if h.tag >> 16 == 0xFFFE:
            raise MalformedDicomError(pos, f"unexpected {_tag_str(h.tag)} inside an item")
        if h.length == UNDEFINED:
            # PS3.5 6.2.2: an undefined-length UN holds Implicit VR Little Endian items
            un = h.vr == VR_UN
            pos = _skip_items(b, h.value, little or un, implicit or un, depth + 1, pos)
        elif h.length > n - h.value:
            raise _past_end(pos, h.length)
        else:
            pos = h.value + h.length


cdef struct Fragments:
    # (offset, length) of each fragment value, in C arrays until the walk is done
    Py_ssize_t* offset
    Py_ssize_t* length
    Py_ssize_t count
    Py_ssize_t capacity


cdef int _append(Fragments* f, Py_ssize_t offset, Py_ssize_t length) except -1:
    cdef Py_ssize_t capacity
    cdef Py_ssize_t* grown
    if f.count == f.capacity:
        capacity = 64 if f.capacity == 0 else 2 * f.capacity
        grown = <Py_ssize_t*>PyMem_Realloc(f.offset, capacity * sizeof(Py_ssize_t))
        if grown == NULL:
            raise MemoryError()
        f.offset = grown
        grown = <Py_ssize_t*>PyMem_Realloc(f.length, capacity * sizeof(Py_ssize_t))
        if grown == NULL:
            raise MemoryError()
        f.length = grown
        f.capacity = capacity
    f.offset[f.count] = offset
    f.length[f.count] = length
    f.count += 1
    return 0


cdef Py_ssize_t _encapsulated(
    Buf* b, Py_ssize_t pos, bint little, Py_ssize_t start,
    Py_ssize_t* bot, Py_ssize_t* bot_length, Fragments* fragments,
) except -1:
    # PS3.5 A.4: an Item for the Basic Offset Table, one per fragment, then (FFFE,E0DD).
    cdef uint32_t tag, length
    cdef bint have_bot = False
    cdef Py_ssize_t n = b.n
    while True:
        if pos >= n:
            raise MalformedDicomError(start, "no Sequence Delimitation Item before end of buffer")
        if n - pos < 8:
            raise MalformedDicomError(pos, "truncated item header")
        tag = (<uint32_t>rd16(b.p + pos, little) << 16) | rd16(b.p + pos + 2, little)
        length = rd32(b.p + pos + 4, little)
        if tag == SEQUENCE_DELIMITER:
            if not have_bot:
                bot[0], bot_length[0] = pos, 0
            return pos + 8
        if tag != ITEM:
            raise MalformedDicomError(pos, f"expected an Item, found {_tag_str(tag)}")
        if length == UNDEFINED:
            raise MalformedDicomError(pos, "item of undefined length in encapsulated Pixel Data")
        if length > n - pos - 8:
            raise _past_end(pos, length)
        if not have_bot:
            bot[0], bot_length[0] = pos + 8, length
            have_bot = True
        else:
            _append(fragments, pos + 8, length)
        pos += 8 + length


cdef object _text(const uint8_t* p, Py_ssize_t length, uint16_t vr, tuple charsets):
    # strip_text, then the ASCII fast path of decode_text
    cdef Py_ssize_t i, end = length, begin = 0
    cdef bint plain = True
    while end > 0 and (p[end - 1] == 0x20 or p[end - 1] == 0):
        end -= 1
    if not VR_KIND[vr_index(vr)] & K_KEEP_LEADING:
        while begin < end and p[begin] == 0x20:
            begin += 1
    for i in range(begin, end):
        if p[i] >= 0x80 or p[i] == 0x1B:
            plain = False
            break
    if plain:
        return PyUnicode_DecodeASCII(<const char*>p + begin, end - begin, NULL)
    raw = PyBytes_FromStringAndSize(<const char*>p + begin, end - begin)
    return _decode_text(raw, VR_STR[vr], charsets)


cdef object _number(const uint8_t* p, int i, bint little):
    # one binary number of the VR with kind-table index i
    cdef uint32_t u32
    cdef uint64_t u64
    cdef float f
    cdef double d
    cdef char code = VR_CODE[i]
    if code == b"H":
        return rd16(p, little)
    if code == b"h":
        return <int16_t>rd16(p, little)
    if code == b"I":
        return rd32(p, little)
    if code == b"i":
        return <int32_t>rd32(p, little)
    if code == b"f":
        u32 = rd32(p, little)
        memcpy(&f, &u32, 4)
        return <double>f
    u64 = rd64(p, little)
    memcpy(&d, &u64, 8)
    return d


cdef object _decode(Buf* b, uint16_t vr, int index, Py_ssize_t value, uint32_t length,
                    bint little, tuple charsets):
    """The value of SCANNED[index], or None to leave it out (see _scan_py._decode)."""
    cdef uint8_t kind = kind_of(vr)
    cdef int i, size, count
    if vr == 0 or vr == VR_UN or not kind & K_KNOWN:
        vr = SCANNED_VR[index]
        kind = kind_of(vr)
    if kind & K_TEXT:
        return _text(b.p + value, length, vr, charsets)
    if not kind & K_NUMBER:
        return None
    i = vr_index(vr)
    size = VR_SIZE[i]
    if length == 0 or length % size:
        return None
    count = length // size
    if count == 1:
        return _number(b.p + value, i, little)
    return tuple([_number(b.p + value + k * size, i, little) for k in range(count)])


cdef int _find_scanned(uint32_t tag) noexcept nogil:
    cdef int lo = 0, hi = N_SCANNED - 1, mid
    if tag > SCANNED_TAG[hi] or tag < SCANNED_TAG[0]:
        return -1
    while lo <= hi:
        mid = (lo + hi) >> 1
        if SCANNED_TAG[mid] == tag:
            return mid
        if SCANNED_TAG[mid] < tag:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1


cdef Py_ssize_t _bsearch(Py_ssize_t* values, Py_ssize_t count, Py_ssize_t wanted) noexcept nogil:
    cdef Py_ssize_t lo = 0, hi = count - 1, mid
    while lo <= hi:
        mid = (lo + hi) >> 1
        if values[mid] == wanted:
            return mid
        if values[mid] < wanted:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1


cdef list _table_frames(Buf* b, Py_ssize_t start, Py_ssize_t length, int size, bint little,
                        Py_ssize_t* rel, Py_ssize_t count):
    # PS3.5 A.4: offsets of each frame's first Item tag, from the first fragment's.
    cdef Py_ssize_t k, index, previous = -1, entries
    cdef uint64_t offset
    cdef Py_ssize_t* firsts
    if length == 0 or length % size:
        return None
    entries = length // size
    firsts = <Py_ssize_t*>PyMem_Malloc((entries + 1) * sizeof(Py_ssize_t))
    if firsts == NULL:
        raise MemoryError()
    try:
        for k in range(entries):
            if size == 8:
                offset = rd64(b.p + start + 8 * k, little)
            else:
                offset = rd32(b.p + start + 4 * k, little)
            if offset > <uint64_t>rel[count - 1]:
                index = -1
            else:
                index = _bsearch(rel, count, <Py_ssize_t>offset)
            if index < 0 or index <= previous:
                return None  # not on a fragment boundary, or not increasing: ignore the table
            firsts[k] = previous = index
        if firsts[0] != 0:
            return None
        firsts[entries] = count
        return [(firsts[k], firsts[k + 1] - firsts[k]) for k in range(entries)]
    finally:
        PyMem_Free(firsts)


cdef list _frames(Buf* b, Fragments* f, Py_ssize_t bot, Py_ssize_t bot_length,
                  Py_ssize_t eot, Py_ssize_t eot_length, object number_of_frames,
                  bint little, bint eoi_frames):
    """Twin of engine.scan._common.derive_frames."""
    cdef Py_ssize_t count = f.count, i, off, length, begin, j, wanted, first
    cdef list frames
    if count == 0:
        return []
    # offsets from the first fragment's Item tag; every Item header is 8 bytes (PS3.5 A.4)
    first = f.offset[0]
    for i in range(count):
        f.offset[i] -= first
    try:
        if eot >= 0:
            frames = _table_frames(b, eot, eot_length, 8, little, f.offset, count)
            if frames is not None:
                return frames
        frames = _table_frames(b, bot, bot_length, 4, little, f.offset, count)
        if frames is not None:
            return frames
    finally:
        for i in range(count):
            f.offset[i] += first
    wanted = 1 if number_of_frames is None else _common._number_of_frames(number_of_frames)
    if wanted == count:
        return [(i, 1) for i in range(count)]
    if wanted > 1 and eoi_frames and count > wanted:
        frames = []
        begin = 0
        for i in range(count):
            off, length = f.offset[i], f.length[i]
            # an FFD9 marker (JPEG EOI, JPEG 2000 EOC) in the last 10 bytes ends a frame
            for j in range(off + (length - 10 if length > 10 else 0), off + length - 1):
                if b.p[j] == 0xFF and b.p[j + 1] == 0xD9:
                    frames.append((begin, i + 1 - begin))
                    begin = i + 1
                    break
        if begin < count:
            frames.append((begin, count - begin))
        if len(frames) == wanted:
            return frames
    return [(0, count)]


cdef tuple _scan_dataset(Buf* b, Py_ssize_t start, bint little, bint implicit,
                         bint eoi_frames, bint with_pixel):
    cdef int i
    cdef bint found[N_SCANNED_MAX]
    cdef uint16_t found_vr[N_SCANNED_MAX]
    cdef Py_ssize_t found_value[N_SCANNED_MAX]
    cdef uint32_t found_length[N_SCANNED_MAX]
    cdef Fragments fragments
    for i in range(N_SCANNED):
        found[i] = False
    fragments.offset = fragments.length = NULL
    fragments.count = fragments.capacity = 0
    try:
        return _walk(b, start, little, implicit, eoi_frames, with_pixel, found, found_vr,
                     found_value, found_length, &fragments)
    finally:
        PyMem_Free(fragments.offset)
        PyMem_Free(fragments.length)


cdef tuple _walk(Buf* b, Py_ssize_t start, bint little, bint implicit, bint eoi_frames,
                 bint with_pixel, bint* found, uint16_t* found_vr, Py_ssize_t* found_value,
                 uint32_t* found_length, Fragments* fragments):
    cdef Py_ssize_t n = b.n, pos = start, end
    cdef Py_ssize_t bot = 0, bot_length = 0, eot = -1, eot_length = 0
    cdef Py_ssize_t px_start = 0, px_value = 0, px_end = 0
    cdef bint have_pixel = False, encapsulated = False, un
    cdef Header h
    cdef int i
    cdef tuple charsets = ()
    if little and implicit and n - start >= 8 and is_vr(b.p[start + 4], b.p[start + 5]):
        implicit = False  # declared Implicit, but the first element carries a VR (pydicom too)
    while pos < n:
        if n - pos < 8:
            raise MalformedDicomError(pos, "truncated element header")
        _header(b, pos, little, implicit, &h)
        if h.tag >> 16 == 0xFFFE:
            raise MalformedDicomError(pos, f"unexpected {_tag_str(h.tag)} at top level")
        if h.length == UNDEFINED:
            if h.tag == PIXEL_DATA:
                fragments.count = 0
                end = _encapsulated(b, h.value, little, pos, &bot, &bot_length, fragments)
                px_start, px_value, px_end = pos, h.value, end
                have_pixel = encapsulated = True
                pos = end
            else:
                un = h.vr == VR_UN  # PS3.5 6.2.2
                pos = _skip_items(b, h.value, little or un, implicit or un, 1, pos)
            continue
        if h.length > n - h.value:
            raise _past_end(pos, h.length)
        i = _find_scanned(h.tag)
        if i >= 0:
            found[i] = True
            found_vr[i], found_value[i], found_length[i] = h.vr, h.value, h.length
        elif h.tag == PIXEL_DATA:
            px_start, px_value, px_end = pos, h.value, h.value + h.length
            have_pixel, encapsulated = True, False
        elif h.tag == EXTENDED_OFFSET_TABLE:
            eot, eot_length = h.value, h.length
        pos = h.value + h.length

    i = _find_scanned(SPECIFIC_CHARACTER_SET)
    if i >= 0 and found[i]:
        cs = _decode(b, found_vr[i], i, found_value[i], found_length[i], little, ())
        if isinstance(cs, str):
            charsets = _common.split_charsets(cs)
    attributes = {}
    for i in range(N_SCANNED):
        if found[i]:
            value = _decode(b, found_vr[i], i, found_value[i], found_length[i], little, charsets)
            if value is not None:
                attributes[SCANNED_KEYWORD[i]] = value
    if not (with_pixel and have_pixel):
        return attributes, None
    if not encapsulated:
        return attributes, PixelSpan(px_start, px_value, px_end, False)
    frames = _frames(b, fragments, bot, bot_length, eot, eot_length,
                     attributes.get("NumberOfFrames"), little, eoi_frames)
    spans = [(fragments.offset[i], fragments.length[i]) for i in range(fragments.count)]
    return attributes, PixelSpan(px_start, px_value, px_end, True, spans, frames)


cdef tuple _file_meta(Buf* b):
    cdef Py_ssize_t n = b.n, pos, start
    cdef Header h
    if n >= 132 and memcmp(b.p + 128, b"DICM", 4) == 0:
        pos = 132  # PS3.10 7.1: 128-byte preamble, then the DICM prefix
    elif n >= 8 and b.p[0] == 2 and b.p[1] == 0 and is_vr(b.p[4], b.p[5]):
        pos = 0  # group 0002 without the preamble
    else:
        return None
    start = pos
    fmi = {}
    # PS3.10 7.1: group 0002 is always Explicit VR Little Endian
    while n - pos >= 2 and b.p[pos] == 2 and b.p[pos + 1] == 0:
        if n - pos < 8:
            raise MalformedDicomError(pos, "truncated element header")
        _header(b, pos, True, False, &h)
        if h.length == UNDEFINED:
            raise MalformedDicomError(pos, "undefined length in File Meta Information")
        if h.length > n - h.value:
            raise _past_end(pos, h.length)
        keyword = FMI_KEYWORDS.get(h.tag)
        if keyword is not None and (h.vr == 0 or h.vr == VR_UN or kind_of(h.vr) & K_TEXT):
            fmi[keyword] = _text(b.p + h.value, h.length, VR_UI, ())
        pos = h.value + h.length
    return start, pos, fmi


cdef object _scan(Buf* b, object mv, object transfer_syntax):
    cdef Py_ssize_t fmi_start, dataset_start
    cdef Buf inflated_buf
    meta = _file_meta(b)
    if meta is None:
        if transfer_syntax is None:
            raise NotDicomError("no File Meta Information and no transfer syntax given")
        fmi_start = dataset_start = 0
        fmi = {}
    else:
        fmi_start, dataset_start, fmi = meta
    uid = fmi.get("TransferSyntaxUID") or transfer_syntax
    if uid is None:
        explicit = b.n - dataset_start >= 6 and is_vr(b.p[dataset_start + 4],
                                                      b.p[dataset_start + 5])
        uid = "1.2.840.10008.1.2.1" if explicit else "1.2.840.10008.1.2"
    syntax = _transfer_syntax_info(uid)
    if syntax.deflated:
        inflated = _common.inflate(mv[dataset_start:], dataset_start)
        inflated_buf.p = <const uint8_t*>PyBytes_AS_STRING(inflated)
        inflated_buf.n = PyBytes_GET_SIZE(inflated)
        attributes, _ = _scan_dataset(&inflated_buf, 0, True, False, False, False)
        return ScanResult(uid, dataset_start, fmi_start, fmi, attributes, None, True)
    attributes, pixel = _scan_dataset(b, dataset_start, syntax.little_endian,
                                      syntax.implicit_vr, syntax.eoi_frames, True)
    return ScanResult(uid, dataset_start, fmi_start, fmi, attributes, pixel)


def scan(buffer, transfer_syntax=None):
    """Read the File Meta Information, the SCANNED attributes and the Pixel Data span.

    The native twin of :func:`engine.scan._scan_py.scan`: same parameters,
    results and exceptions.

    Parameters
    ----------
    buffer : bytes, bytearray or memoryview
        A Part 10 file, or a bare dataset (as received over DIMSE).
    transfer_syntax : str, optional
        The transfer syntax UID of a bare dataset; ignored when the buffer has
        File Meta Information with a Transfer Syntax UID.

    Returns
    -------
    ScanResult
        Offsets are absolute positions in `buffer`.

    Raises
    ------
    NotDicomError
        If there is neither File Meta Information nor `transfer_syntax`.
    UnsupportedTransferSyntaxError
        If the transfer syntax UID is unknown.
    MalformedDicomError
        If the encoding breaks PS3.5 framing; ``offset`` says where.
    """
    cdef Py_buffer view
    cdef Buf b
    mv = memoryview(buffer)
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    PyObject_GetBuffer(mv, &view, PyBUF_SIMPLE)
    try:
        b.p = <const uint8_t*>view.buf
        b.n = view.len
        return _scan(&b, mv, transfer_syntax)
    finally:
        PyBuffer_Release(&view)

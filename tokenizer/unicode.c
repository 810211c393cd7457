/* unicode.c - UTF-8 validation, categories, case folding and the byte-level
 * alphabet for the tokenizer. utf8proc supplies the Unicode data. */
#include "unicode.h"

#include <utf8proc.h>

/* Returns the UTF-8 length of cp written to out. */
int glm_utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Returns the valid length at s[i] (1..4) or minus the invalid run length. */
int glm_utf8_next(const uint8_t *s, size_t n, size_t i, int *incomplete) {
    uint8_t c = s[i];
    if (incomplete) *incomplete = 0;
    if (c < 0x80) return 1;
    int w;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) w = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        w = 3;
        if (c == 0xE0) lo = 0xA0;
        else if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        w = 4;
        if (c == 0xF0) lo = 0x90;
        else if (c == 0xF4) hi = 0x8F;
    } else {
        return -1;
    }
    for (int k = 1; k < w; k++) {
        if (i + k >= n) {
            if (incomplete) *incomplete = 1;
            return -k;
        }
        uint8_t b = s[i + k];
        uint8_t l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
        if (b < l || b > h) return -k;
    }
    return w;
}

/* Returns the offset of the first invalid byte, or n. */
size_t glm_utf8_check(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int l = glm_utf8_next(s, n, i, NULL);
        if (l < 0) return i;
        i += (size_t)l;
    }
    return n;
}

/* Returns the utf8proc category of cp. */
int glm_ucat(uint32_t cp) {
    return (int)utf8proc_category((utf8proc_int32_t)cp);
}

/* Returns non-zero for White_Space characters. */
int glm_is_white_space(uint32_t cp) {
    if (cp < 0x80) return cp == ' ' || (cp >= 9 && cp <= 13);
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
           cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* Returns the one-character case fold of cp. */
uint32_t glm_fold1(uint32_t cp) {
    if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
    utf8proc_int32_t buf[4];
    int last = 0;
    utf8proc_ssize_t k = utf8proc_decompose_char((utf8proc_int32_t)cp, buf, 4, UTF8PROC_CASEFOLD, &last);
    if (k == 1) return (uint32_t)buf[0];
    return (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp);
}

/* Returns the simple lowercase mapping of cp. */
uint32_t glm_lower1(uint32_t cp) {
    return (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp);
}

/* Returns the simple uppercase mapping of cp. */
uint32_t glm_upper1(uint32_t cp) {
    return (uint32_t)utf8proc_toupper((utf8proc_int32_t)cp);
}

/* Returns non-zero when byte b is printed as itself in the byte-level alphabet. */
static int byte_is_direct(unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

/* Returns the byte-level character of byte b. */
uint32_t glm_byte_to_char(uint8_t b) {
    if (byte_is_direct(b)) return b;
    unsigned k = 0;
    for (unsigned x = 0; x < b; x++)
        if (!byte_is_direct(x)) k++;
    return 256 + k;
}

/* Returns the byte that byte-level character cp stands for, or -1. */
int glm_char_to_byte(uint32_t cp) {
    if (cp < 256) return byte_is_direct(cp) ? (int)cp : -1;
    if (cp >= 256 + 68) return -1;
    unsigned k = cp - 256;
    for (unsigned x = 0; x < 256; x++) {
        if (byte_is_direct(x)) continue;
        if (k == 0) return (int)x;
        k--;
    }
    return -1;
}

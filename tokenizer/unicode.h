/* unicode.h - the Unicode helpers the tokenizer and its regex engine share: UTF-8
 * decoding and validation (with Rust's from_utf8_lossy rules), general categories
 * and case folding through utf8proc, and the GPT-2 byte-level alphabet. Internal. */
#ifndef GLM_TOK_UNICODE_H
#define GLM_TOK_UNICODE_H

#include <stddef.h>
#include <stdint.h>

/* utf8proc general categories as bits (1u << UTF8PROC_CATEGORY_xx). */
#define GLM_CAT(c) (1u << (c))

/* Decodes the character at s[i] of valid UTF-8 text; returns its byte length. */
static inline int glm_utf8_decode(const uint8_t *s, size_t i, uint32_t *cp) {
    uint8_t c = s[i];
    if (c < 0x80) { *cp = c; return 1; }
    if (c < 0xE0) { *cp = ((uint32_t)(c & 0x1F) << 6) | (s[i + 1] & 0x3F); return 2; }
    if (c < 0xF0) {
        *cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[i + 1] & 0x3F) << 12) |
          ((uint32_t)(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
    return 4;
}

/* Encodes cp as UTF-8 into out (4 bytes room); returns the byte length. */
int glm_utf8_encode(uint32_t cp, char *out);

/* Length of the valid character starting at s[i] of s[0..n) (1..4), or minus the
 * length of the invalid run to replace by one U+FFFD, as Rust's from_utf8_lossy does
 * (-1..-3). When the bytes end in the middle of an otherwise valid sequence, returns
 * minus the bytes present and sets *incomplete (when not NULL). */
int glm_utf8_next(const uint8_t *s, size_t n, size_t i, int *incomplete);

/* Returns the byte offset of the first invalid UTF-8 byte of s[0..n), or n when valid. */
size_t glm_utf8_check(const uint8_t *s, size_t n);

/* The utf8proc general category of cp. */
int glm_ucat(uint32_t cp);
/* Non-zero when cp has the Unicode White_Space property. */
int glm_is_white_space(uint32_t cp);
/* Simple (one-to-one) case fold of cp: the full fold when it is one character, else
 * the lowercase mapping, else cp. */
uint32_t glm_fold1(uint32_t cp);
/* Lowercase and uppercase simple mappings. */
uint32_t glm_lower1(uint32_t cp);
uint32_t glm_upper1(uint32_t cp);

/* GPT-2 byte-level alphabet: the character standing for byte b, and back (-1 when cp
 * stands for no byte). */
uint32_t glm_byte_to_char(uint8_t b);
int glm_char_to_byte(uint32_t cp);

#endif

/* regex.c - backtracking regex engine with Oniguruma (Ruby syntax) semantics, enough
 * for the pre-tokenizer patterns of byte-level BPE tokenizers: literals, classes with
 * Unicode general categories, alternation, groups, inline (?i) (?m), quantifiers
 * (greedy, lazy, possessive, counted), lookahead, atomic groups and anchors.
 * Parse to a small AST, compile to instructions, run with an explicit backtrack stack.
 * Each alternative and the search start carry a first-character set so that most
 * branches are skipped without being entered. */
#include "regex.h"
#include "unicode.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define RE_MAX_INST 200000
#define RE_MAX_GEN 2000000         /* nodes visited while compiling (repeats visit their body again) */
#define RE_MAX_REPEAT 100000
#define RE_MAX_DEPTH 256           /* nesting of groups, classes and quantifiers */
#define RE_RETRY_LIMIT 10000000L   /* Oniguruma's default retry limit in one match */
#define RE_MAX_STACK (1u << 22)    /* backtrack entries (96 MiB) */

/* ---- classes ---- */
enum { CI_RANGE, CI_CATS, CI_SPACE, CI_WORD, CI_HEX, CI_SUB };

typedef struct {
    uint8_t kind, neg;
    uint32_t lo, hi;      /* CI_RANGE */
    uint32_t cats;        /* CI_CATS: category bits */
    int sub;              /* CI_SUB: class index */
} citem;

typedef struct {
    uint64_t ascii[2];    /* final answer (negation and case folding applied) for cp < 128 */
    uint8_t neg, icase;
    int first, n;         /* items[first .. first+n) */
} rclass;

/* ---- AST ---- */
enum { N_EMPTY, N_CHAR, N_CLASS, N_ANY, N_CAT, N_ALT, N_REP, N_LOOK, N_ATOMIC, N_ASSERT };
enum { A_BOL, A_EOL, A_BOS, A_EOS, A_EOS_NL, A_WORDB, A_NWORDB };
enum { Q_GREEDY, Q_LAZY, Q_POSSESSIVE };

typedef struct {
    uint8_t type, icase, dotall, mode, neg;
    uint32_t cp;          /* N_CHAR */
    int cls;              /* N_CLASS */
    int min, max;         /* N_REP, max -1 = unbounded */
    int akind;            /* N_ASSERT */
    int child, next;      /* first child, next sibling (-1) */
    int last;             /* last child, for appends */
    int height;           /* 1 + the height of the tallest child */
} rnode;

/* ---- program ---- */
enum {
    OP_CHAR, OP_CLASS, OP_ANY, OP_SPLIT, OP_JMP, OP_REP, OP_LOOK, OP_ATOMIC, OP_ASSERT,
    OP_NULL_START, OP_NULL_END, OP_MATCH
};

typedef struct {
    uint8_t op, mode, icase;
    int32_t a, b;         /* jump targets / REP min,max / CLASS index / slot */
    int32_t fa, fb;       /* SPLIT: first-set index of branch a and b, -1 = unknown */
    uint32_t cp, fold;    /* CHAR */
} rinst;

typedef struct {
    uint64_t ascii[2];
    uint8_t nonascii;     /* may start with a non-ASCII character */
    uint8_t nullable;     /* may match without consuming (then no skipping) */
} fset;

struct glm_regex {
    rinst *code;
    int n_code;
    rclass *cls;
    int n_cls;
    citem *items;
    int n_items;
    fset *fs;
    int n_fs;
    int root_fs;          /* first set of the whole pattern */
    int n_slots;
};

typedef struct {
    const uint8_t *p;
    size_t n, i;
    rnode *nodes;
    int n_nodes, cap_nodes;
    rclass *cls;
    int n_cls, cap_cls;
    citem *items;
    int n_items, cap_items;
    rinst *code;
    int n_code, cap_code;
    fset *fs;
    int n_fs, cap_fs;
    fset *node_fs;        /* first set of each node, computed once (node_fs_done) */
    uint8_t *node_fs_done;
    int n_slots;
    int depth;            /* groups and classes open while parsing */
    long gen_visits;      /* nodes the code generator visited */
    char *err;
    size_t err_len;
    int failed;
} rparser;

/* Records the first error (with the pattern offset) and returns -1. */
static int perr(rparser *P, const char *fmt, ...) {
    if (P->failed) return -1;
    P->failed = 1;
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (P->err && P->err_len) snprintf(P->err, P->err_len, "%s at offset %zu", msg, P->i);
    return -1;
}

/* Grows an array to hold one more element; returns 0 or -1 when out of memory. */
static int grow(void **arr, int *cap, int n, size_t elem) {
    if (n < *cap) return 0;
    int nc = *cap ? *cap * 2 : 32;
    void *na = realloc(*arr, (size_t)nc * elem);
    if (!na) return -1;
    *arr = na;
    *cap = nc;
    return 0;
}

/* Returns the index of a new node of the given type, or -1. */
static int new_node(rparser *P, int type) {
    if (grow((void **)&P->nodes, &P->cap_nodes, P->n_nodes, sizeof(rnode))) return perr(P, "out of memory");
    rnode *nd = &P->nodes[P->n_nodes];
    memset(nd, 0, sizeof *nd);
    nd->type = (uint8_t)type;
    nd->child = nd->next = nd->last = -1;
    nd->height = 1;
    return P->n_nodes++;
}

/* Appends child c to node parent; returns 0, or -1 when the tree gets deeper than
 * RE_MAX_DEPTH (the compiler recurses over it). */
static int add_child(rparser *P, int parent, int c) {
    rnode *pn = &P->nodes[parent];
    if (pn->child < 0) pn->child = c;
    else P->nodes[pn->last].next = c;
    pn->last = c;
    if (P->nodes[c].height >= pn->height) pn->height = P->nodes[c].height + 1;
    if (pn->height > RE_MAX_DEPTH) return perr(P, "regex nesting deeper than %d", RE_MAX_DEPTH);
    return 0;
}

/* Enters a group or class (the parser recurses); returns 0, or -1 past RE_MAX_DEPTH. */
static int enter(rparser *P) {
    if (++P->depth > RE_MAX_DEPTH) return perr(P, "regex nesting deeper than %d", RE_MAX_DEPTH);
    return 0;
}

/* Returns the number of children of node k. */
static int n_children(const rparser *P, int k) {
    int n = 0;
    for (int c = P->nodes[k].child; c >= 0; c = P->nodes[c].next) n++;
    return n;
}

/* ---- class matching ---- */
static int hexv(int32_t c);
static int class_raw(const glm_regex *re, const rclass *c, uint32_t cp);

/* Returns non-zero when item it matches cp (before the item's own negation). */
static int item_match(const glm_regex *re, const citem *it, uint32_t cp) {
    switch (it->kind) {
    case CI_RANGE: return cp >= it->lo && cp <= it->hi;
    case CI_CATS: return (it->cats >> glm_ucat(cp)) & 1;
    case CI_SPACE: return glm_is_white_space(cp);
    case CI_WORD: {
        int cat = glm_ucat(cp);
        uint32_t w = GLM_CAT(UTF8PROC_CATEGORY_LU) | GLM_CAT(UTF8PROC_CATEGORY_LL) | GLM_CAT(UTF8PROC_CATEGORY_LT) |
                     GLM_CAT(UTF8PROC_CATEGORY_LM) | GLM_CAT(UTF8PROC_CATEGORY_LO) | GLM_CAT(UTF8PROC_CATEGORY_MN) |
                     GLM_CAT(UTF8PROC_CATEGORY_MC) | GLM_CAT(UTF8PROC_CATEGORY_ME) | GLM_CAT(UTF8PROC_CATEGORY_ND) |
                     GLM_CAT(UTF8PROC_CATEGORY_NL) | GLM_CAT(UTF8PROC_CATEGORY_PC);
        return ((w >> cat) & 1) || cp == 0x200C || cp == 0x200D;
    }
    case CI_HEX: return hexv((int32_t)cp) >= 0;
    case CI_SUB: return class_raw(re, &re->cls[it->sub], cp);
    }
    return 0;
}

/* Returns non-zero when class c matches cp, case folding ignored. */
static int class_raw(const glm_regex *re, const rclass *c, uint32_t cp) {
    int m = 0;
    for (int k = 0; k < c->n && !m; k++) {
        const citem *it = &re->items[c->first + k];
        m = item_match(re, it, cp) ^ it->neg;
    }
    return m ^ c->neg;
}

/* Returns non-zero when class c matches cp, honouring (?i). */
static int class_match(const glm_regex *re, const rclass *c, uint32_t cp) {
    if (cp < 128) return (int)((c->ascii[cp >> 6] >> (cp & 63)) & 1);
    if (class_raw(re, c, cp)) return 1;
    if (!c->icase) return 0;
    uint32_t f = glm_fold1(cp), l = glm_lower1(cp), u = glm_upper1(cp);
    return (f != cp && class_raw(re, c, f)) || (l != cp && class_raw(re, c, l)) ||
           (u != cp && class_raw(re, c, u));
}

/* Fills the ASCII answer table of class k (after all its items exist). */
static void class_finish(glm_regex *re, int k) {
    rclass *c = &re->cls[k];
    c->ascii[0] = c->ascii[1] = 0;
    for (uint32_t cp = 0; cp < 128; cp++) {
        int m = class_raw(re, c, cp);
        if (!m && c->icase) {
            uint32_t f = glm_fold1(cp), u = glm_upper1(cp);
            m = class_raw(re, c, f) || class_raw(re, c, u);
            /* characters outside ASCII that fold to this one (U+017F long s, U+212A Kelvin) */
            if (!m && cp == 's') m = class_raw(re, c, 0x17F);
            if (!m && cp == 'k') m = class_raw(re, c, 0x212A);
        }
        if (m) c->ascii[cp >> 6] |= 1ull << (cp & 63);
    }
}

/* ---- parser ---- */
static int parse_alt(rparser *P, int *icase, int *dotall);

/* Returns the next pattern character without advancing, or -1 at the end; *len gets
 * its byte length. The pattern is valid UTF-8 (checked first); a sequence cut by the
 * end still reads as the end, never past it. */
static int32_t cp_at(const rparser *P, int *len) {
    if (P->i >= P->n) return -1;
    uint8_t c = P->p[P->i];
    int l = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if ((size_t)l > P->n - P->i) return -1;
    uint32_t cp;
    *len = glm_utf8_decode(P->p, P->i, &cp);
    return (int32_t)cp;
}

/* Returns the next pattern character (advancing), or -1 at the end. */
static int32_t next_cp(rparser *P) {
    int l = 0;
    int32_t c = cp_at(P, &l);
    P->i += (size_t)l;
    return c;
}

/* Returns the next pattern character without advancing, or -1. */
static int32_t peek_cp(const rparser *P) {
    int l;
    return cp_at(P, &l);
}

/* Returns non-zero when code point c is one of the ASCII characters of set (strchr
 * alone would take U+1F600 for the terminating NUL, U+0173 for 's'). */
static int ascii_in(int32_t c, const char *set) {
    return c > 0 && c < 128 && strchr(set, (int)c) != NULL;
}

/* Returns the value of hex digit c, or -1. */
static int hexv(int32_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Returns the category bits for a \p{...} name (normalised), or 0 when unknown: a
 * general category (lu or uppercaseletter), a major class (l or letter: every category
 * of that first letter), lc (casedletter) or any. */
static uint32_t prop_cats(const char *name) {
    static const struct { const char *n, *alias; int cat; } C[] = {
        {"lu", "uppercaseletter",      UTF8PROC_CATEGORY_LU},
        {"ll", "lowercaseletter",      UTF8PROC_CATEGORY_LL},
        {"lt", "titlecaseletter",      UTF8PROC_CATEGORY_LT},
        {"lm", "modifierletter",       UTF8PROC_CATEGORY_LM},
        {"lo", "otherletter",          UTF8PROC_CATEGORY_LO},
        {"mn", "nonspacingmark",       UTF8PROC_CATEGORY_MN},
        {"mc", "spacingmark",          UTF8PROC_CATEGORY_MC},
        {"me", "enclosingmark",        UTF8PROC_CATEGORY_ME},
        {"nd", "decimalnumber",        UTF8PROC_CATEGORY_ND},
        {"nl", "letternumber",         UTF8PROC_CATEGORY_NL},
        {"no", "othernumber",          UTF8PROC_CATEGORY_NO},
        {"pc", "connectorpunctuation", UTF8PROC_CATEGORY_PC},
        {"pd", "dashpunctuation",      UTF8PROC_CATEGORY_PD},
        {"ps", "openpunctuation",      UTF8PROC_CATEGORY_PS},
        {"pe", "closepunctuation",     UTF8PROC_CATEGORY_PE},
        {"pi", "initialpunctuation",   UTF8PROC_CATEGORY_PI},
        {"pf", "finalpunctuation",     UTF8PROC_CATEGORY_PF},
        {"po", "otherpunctuation",     UTF8PROC_CATEGORY_PO},
        {"sm", "mathsymbol",           UTF8PROC_CATEGORY_SM},
        {"sc", "currencysymbol",       UTF8PROC_CATEGORY_SC},
        {"sk", "modifiersymbol",       UTF8PROC_CATEGORY_SK},
        {"so", "othersymbol",          UTF8PROC_CATEGORY_SO},
        {"zs", "spaceseparator",       UTF8PROC_CATEGORY_ZS},
        {"zl", "lineseparator",        UTF8PROC_CATEGORY_ZL},
        {"zp", "paragraphseparator",   UTF8PROC_CATEGORY_ZP},
        {"cc", "control",              UTF8PROC_CATEGORY_CC},
        {"cf", "format",               UTF8PROC_CATEGORY_CF},
        {"cs", "surrogate",            UTF8PROC_CATEGORY_CS},
        {"co", "privateuse",           UTF8PROC_CATEGORY_CO},
        {"cn", "unassigned",           UTF8PROC_CATEGORY_CN},
    };
    static const struct { const char *n, *alias; } MAJOR[] = {
        {"l", "letter"}, {"m", "mark"}, {"n", "number"}, {"p", "punctuation"},
        {"s", "symbol"}, {"z", "separator"}, {"c", "other"},
    };
    const size_t n_c = sizeof C / sizeof C[0];
    if (!strcmp(name, "any")) return 0x3FFFFFFFu;
    if (!strcmp(name, "lc") || !strcmp(name, "casedletter"))
        return GLM_CAT(UTF8PROC_CATEGORY_LU) | GLM_CAT(UTF8PROC_CATEGORY_LL) | GLM_CAT(UTF8PROC_CATEGORY_LT);
    for (size_t g = 0; g < sizeof MAJOR / sizeof MAJOR[0]; g++) {
        if (strcmp(name, MAJOR[g].n) && strcmp(name, MAJOR[g].alias)) continue;
        uint32_t m = 0;
        for (size_t k = 0; k < n_c; k++)
            if (C[k].n[0] == MAJOR[g].n[0]) m |= GLM_CAT(C[k].cat);
        return m;
    }
    for (size_t k = 0; k < n_c; k++)
        if (!strcmp(name, C[k].n) || !strcmp(name, C[k].alias)) return GLM_CAT(C[k].cat);
    return 0;
}

/* Appends an item to the class being built; returns 0 or -1. */
static int add_item(rparser *P, int kind, int neg, uint32_t lo, uint32_t hi, uint32_t cats, int sub) {
    if (grow((void **)&P->items, &P->cap_items, P->n_items, sizeof(citem))) return perr(P, "out of memory");
    citem *it = &P->items[P->n_items++];
    it->kind = (uint8_t)kind;
    it->neg = (uint8_t)neg;
    it->lo = lo;
    it->hi = hi;
    it->cats = cats;
    it->sub = sub;
    return 0;
}

/* Parses \p{..} / \P{..} after the 'p'/'P'; appends the item. Returns 0 or -1. */
static int parse_prop(rparser *P, int neg) {
    if (peek_cp(P) != '{') return perr(P, "\\p without {name} is not supported");
    P->i++;
    char name[48];
    size_t k = 0;
    if (peek_cp(P) == '^') {
        neg = !neg;
        P->i++;
    }
    size_t start = P->i;
    for (;;) {
        int32_t c = next_cp(P);
        if (c < 0) return perr(P, "unterminated \\p{");
        if (c == '}') break;
        if (c == ' ' || c == '_' || c == '-') continue;
        if (k + 1 >= sizeof name) return perr(P, "property name too long");
        name[k++] = (char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
    }
    name[k] = 0;
    uint32_t cats = prop_cats(name);
    if (!cats)
        return perr(P, "Unicode property \\p{%.*s} is not supported (general categories only)", (int)(P->i - 1 - start),
                    (const char *)P->p + start);
    return add_item(P, CI_CATS, neg, 0, 0, cats, 0);
}

/* Parses a numeric escape (\x.., \u....); returns the code point or -1. */
static int32_t parse_hex_escape(rparser *P, int32_t kind) {
    uint32_t v = 0;
    int digits = 0;
    if (kind == 'x' && peek_cp(P) == '{') {
        P->i++;
        int32_t c;
        while ((c = next_cp(P)) != '}') {
            if (c < 0 || hexv(c) < 0 || digits >= 8) return perr(P, "bad \\x{...} escape");
            v = v * 16 + (uint32_t)hexv(c);
            digits++;
        }
        if (!digits || v > 0x10FFFF) return perr(P, "bad \\x{...} escape");
        return (int32_t)v;
    }
    int want = kind == 'x' ? 2 : 4;
    while (digits < want && hexv(peek_cp(P)) >= 0) {
        v = v * 16 + (uint32_t)hexv(next_cp(P));
        digits++;
    }
    if (!digits || (kind == 'u' && digits != 4)) return perr(P, "bad \\%c escape", (char)kind);
    return (int32_t)v;
}

/* Returns the code point of a simple character escape (\n, \t, ...) or -2 when c is
 * not one; -1 on error. */
static int32_t simple_escape(rparser *P, int32_t c, int in_class) {
    switch (c) {
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    case 'f': return '\f';
    case 'v': return '\v';
    case 'a': return 7;
    case 'e': return 27;
    case 'x': case 'u': return parse_hex_escape(P, c);
    case '0': {
        uint32_t v = 0;
        for (int k = 0; k < 2 && peek_cp(P) >= '0' && peek_cp(P) <= '7'; k++) v = v * 8 + (uint32_t)(next_cp(P) - '0');
        return (int32_t)v;
    }
    case 'b': if (in_class) return 8; return -2;
    }
    return -2;
}

/* Appends the item for a class escape (\s \d \w \h and negations, \p); returns 1 if
 * c was one, 0 if not, -1 on error. */
static int class_escape_item(rparser *P, int32_t c) {
    switch (c) {
    case 's': case 'S': return add_item(P, CI_SPACE, c == 'S', 0, 0, 0, 0) ? -1 : 1;
    case 'd': case 'D': return add_item(P, CI_CATS, c == 'D', 0, 0, GLM_CAT(UTF8PROC_CATEGORY_ND), 0) ? -1 : 1;
    case 'w': case 'W': return add_item(P, CI_WORD, c == 'W', 0, 0, 0, 0) ? -1 : 1;
    case 'h': case 'H': return add_item(P, CI_HEX, c == 'H', 0, 0, 0, 0) ? -1 : 1;
    case 'p': case 'P': return parse_prop(P, c == 'P') ? -1 : 1;
    }
    return 0;
}

/* Items of one class must be contiguous, and a nested class appends its own items
 * while the outer one is being parsed, so a class collects its items in a temporary
 * list and copies them to the end of the item array when it closes. */
typedef struct {
    citem *v;
    int n, cap;
} item_list;

/* Moves items appended since mark into list l; returns 0 or -1. */
static int take_items(rparser *P, int mark, item_list *l) {
    for (int k = mark; k < P->n_items; k++) {
        if (grow((void **)&l->v, &l->cap, l->n, sizeof(citem))) return perr(P, "out of memory");
        l->v[l->n++] = P->items[k];
    }
    return 0;
}

/* Parses a bracket class after '['; returns the class index or -1. */
static int parse_class(rparser *P, int icase) {
    item_list L = {0};
    int neg = 0, first = 1;
    if (enter(P)) return -1;
    if (peek_cp(P) == '^') {
        neg = 1;
        P->i++;
    }
    for (;;) {
        int32_t c = next_cp(P);
        if (c < 0) { perr(P, "unterminated character class"); goto fail; }
        if (c == ']' && !first) break;
        first = 0;
        if (c == '[') {
            if (peek_cp(P) == ':') { perr(P, "POSIX bracket [:name:] is not supported"); goto fail; }
            int sub = parse_class(P, icase);
            if (sub < 0) goto fail;
            int mark = P->n_items;
            if (add_item(P, CI_SUB, 0, 0, 0, 0, sub) || take_items(P, mark, &L)) goto fail;
            P->n_items = mark;
            continue;
        }
        if (c == '&' && peek_cp(P) == '&') { perr(P, "class intersection && is not supported"); goto fail; }
        int32_t lo;
        if (c == '\\') {
            int32_t e = next_cp(P);
            if (e < 0) { perr(P, "trailing backslash"); goto fail; }
            int mark = P->n_items;
            int r = class_escape_item(P, e);
            if (r < 0) goto fail;
            if (r == 1) {
                if (take_items(P, mark, &L)) goto fail;
                P->n_items = mark;
                continue;
            }
            lo = simple_escape(P, e, 1);
            if (lo == -1) goto fail;
            if (lo == -2) {
                if ((e >= '1' && e <= '9') || e == 'k' || e == 'g' || e == 'R' || e == 'X' || e == 'N' ||
                    e == 'O' || e == 'K' || e == 'c' || e == 'C' || e == 'M') {
                    perr(P, "escape \\%c in a class is not supported", (char)e);
                    goto fail;
                }
                lo = e;
            }
        } else {
            lo = c;
        }
        int32_t hi = lo;
        if (peek_cp(P) == '-' && P->i + 1 < P->n && P->p[P->i + 1] != ']') {
            P->i++;
            int32_t d = next_cp(P);
            if (d == '[') { perr(P, "class range to a nested class"); goto fail; }
            if (d == '\\') {
                int32_t e = next_cp(P);
                if (e < 0) { perr(P, "trailing backslash"); goto fail; }
                if (ascii_in(e, "sSdDwWhHpP")) { perr(P, "class range ending in \\%c", (char)e); goto fail; }
                d = simple_escape(P, e, 1);
                if (d == -1) goto fail;
                if (d == -2) d = e;
            }
            if (d < lo) { perr(P, "empty range in char class"); goto fail; }
            hi = d;
        }
        int mark = P->n_items;
        if (add_item(P, CI_RANGE, 0, (uint32_t)lo, (uint32_t)hi, 0, 0) || take_items(P, mark, &L)) goto fail;
        P->n_items = mark;
    }
    /* copy the collected items to the end of the item array, contiguous */
    int start = P->n_items;
    for (int k = 0; k < L.n; k++) {
        if (grow((void **)&P->items, &P->cap_items, P->n_items, sizeof(citem))) { perr(P, "out of memory"); goto fail; }
        P->items[P->n_items++] = L.v[k];
    }
    free(L.v);
    if (grow((void **)&P->cls, &P->cap_cls, P->n_cls, sizeof(rclass))) return perr(P, "out of memory");
    rclass *rc = &P->cls[P->n_cls];
    memset(rc, 0, sizeof *rc);
    rc->first = start;
    rc->n = L.n;
    rc->neg = (uint8_t)neg;
    rc->icase = (uint8_t)icase;
    P->depth--;
    return P->n_cls++;
fail:
    free(L.v);
    return -1;
}

/* Makes a class node holding one escape item (\s, \p{L}, ...); returns the node or -1. */
static int escape_class_node(rparser *P, int32_t e, int icase) {
    int last = P->n_items;
    if (class_escape_item(P, e) <= 0) return -1;
    if (grow((void **)&P->cls, &P->cap_cls, P->n_cls, sizeof(rclass))) return perr(P, "out of memory");
    rclass *rc = &P->cls[P->n_cls];
    memset(rc, 0, sizeof *rc);
    rc->first = last;
    rc->n = 1;
    rc->icase = (uint8_t)icase;
    int k = new_node(P, N_CLASS);
    if (k < 0) return -1;
    P->nodes[k].cls = P->n_cls++;
    return k;
}

/* Parses one atom; returns its node, -1 on error, or -2 when at '|' ')' or the end. */
static int parse_atom(rparser *P, int *icase, int *dotall) {
    int32_t c = peek_cp(P);
    if (c < 0 || c == '|' || c == ')') return -2;
    size_t at = P->i;
    next_cp(P);
    int k;
    switch (c) {
    case '(': {
        int kind = N_EMPTY, neg = 0;
        int sub_icase = *icase, sub_dotall = *dotall;
        if (peek_cp(P) == '?') {
            P->i++;
            size_t dpos = P->i;
            int32_t d = next_cp(P);
            if (d == ':') kind = N_CAT;
            else if (d == '=' || d == '!') { kind = N_LOOK; neg = d == '!'; }
            else if (d == '>') kind = N_ATOMIC;
            else if (d == '#') {
                while (P->i < P->n && P->p[P->i] != ')') P->i++;
                if (P->i >= P->n) return perr(P, "unterminated comment group");
                P->i++;
                return new_node(P, N_EMPTY);
            } else if (d == '<') {
                int32_t e = peek_cp(P);
                if (e == '=' || e == '!') return perr(P, "lookbehind (?<%c...) is not supported", (char)e);
                while (P->i < P->n && P->p[P->i] != '>') P->i++;
                if (P->i >= P->n) return perr(P, "unterminated group name");
                P->i++;
                kind = N_CAT;
            } else if (d == '\'' ) {
                return perr(P, "named group (?'name'...) is not supported");
            } else {
                /* inline options: (?imx-imx) or (?imx-imx:...) */
                int on = 1, ni = *icase, nd = *dotall;
                P->i = dpos;
                for (;;) {
                    int32_t o = next_cp(P);
                    if (o == '-') on = 0;
                    else if (o == 'i') ni = on;
                    else if (o == 'm') nd = on;
                    else if (o == 'x') return perr(P, "extended mode (?x) is not supported");
                    else if (o == ':') { kind = N_CAT; sub_icase = ni; sub_dotall = nd; break; }
                    else if (o == ')') {
                        /* applies to the rest of the enclosing group */
                        *icase = ni;
                        *dotall = nd;
                        return new_node(P, N_EMPTY);
                    } else {
                        P->i = at;
                        if (o < 0) return perr(P, "unterminated group (?");
                        char u[5];
                        int ul = glm_utf8_encode((uint32_t)o, u);
                        return perr(P, "group construct (?%.*s is not supported", ul, u);
                    }
                }
            }
        } else {
            kind = N_CAT;  /* capturing group: captures are not needed for splitting */
        }
        if (enter(P)) return -1;
        int body = parse_alt(P, &sub_icase, &sub_dotall);
        if (body < 0) return -1;
        P->depth--;
        if (peek_cp(P) != ')') return perr(P, "missing )");
        P->i++;
        if (kind == N_CAT) return body;
        k = new_node(P, kind);
        if (k < 0) return -1;
        P->nodes[k].neg = (uint8_t)neg;
        return add_child(P, k, body) ? -1 : k;
    }
    case '[': {
        int cl = parse_class(P, *icase);
        if (cl < 0) return -1;
        k = new_node(P, N_CLASS);
        if (k < 0) return -1;
        P->nodes[k].cls = cl;
        return k;
    }
    case '.':
        k = new_node(P, N_ANY);
        if (k >= 0) P->nodes[k].dotall = (uint8_t)*dotall;
        return k;
    case '^': case '$':
        k = new_node(P, N_ASSERT);
        if (k >= 0) P->nodes[k].akind = c == '^' ? A_BOL : A_EOL;
        return k;
    case '*': case '+': case '?':
        P->i = at;
        return perr(P, "target of repeat operator is not specified");
    case '\\': {
        int32_t e = next_cp(P);
        if (e < 0) return perr(P, "trailing backslash");
        if (ascii_in(e, "sSdDwWhHpP")) return escape_class_node(P, e, *icase);
        int ak = -1;
        switch (e) {
        case 'A': ak = A_BOS; break;
        case 'z': ak = A_EOS; break;
        case 'Z': ak = A_EOS_NL; break;
        case 'b': ak = A_WORDB; break;
        case 'B': ak = A_NWORDB; break;
        }
        if (ak >= 0) {
            k = new_node(P, N_ASSERT);
            if (k >= 0) P->nodes[k].akind = ak;
            return k;
        }
        if ((e >= '1' && e <= '9') || e == 'k' || e == 'g')
            return perr(P, "backreference or subexpression call \\%c is not supported", (char)e);
        if (ascii_in(e, "GKRXNOyYcCM")) return perr(P, "escape \\%c is not supported", (char)e);
        int32_t v = simple_escape(P, e, 0);
        if (v == -1) return -1;
        c = v == -2 ? e : v;
        break;
    }
    }
    k = new_node(P, N_CHAR);
    if (k < 0) return -1;
    P->nodes[k].cp = (uint32_t)c;
    P->nodes[k].icase = (uint8_t)*icase;
    return k;
}

/* Parses an interval {m}, {m,}, {m,n}, {,n} at '{'; returns 1 and sets min/max, 0 if
 * the text is not an interval (then '{' is a literal, as in Ruby syntax), -1 on error. */
static int parse_interval(rparser *P, int *min, int *max) {
    size_t save = P->i;
    P->i++;
    long a = -1, b = -1;
    int comma = 0;
    while (P->i < P->n && P->p[P->i] >= '0' && P->p[P->i] <= '9') {
        a = (a < 0 ? 0 : a) * 10 + (P->p[P->i++] - '0');
        if (a > RE_MAX_REPEAT) return perr(P, "repeat count too large");
    }
    if (P->i < P->n && P->p[P->i] == ',') {
        comma = 1;
        P->i++;
        while (P->i < P->n && P->p[P->i] >= '0' && P->p[P->i] <= '9') {
            b = (b < 0 ? 0 : b) * 10 + (P->p[P->i++] - '0');
            if (b > RE_MAX_REPEAT) return perr(P, "repeat count too large");
        }
    }
    if (P->i >= P->n || P->p[P->i] != '}' || (a < 0 && b < 0)) {
        P->i = save;
        return 0;
    }
    P->i++;
    *min = a < 0 ? 0 : (int)a;
    *max = comma ? (b < 0 ? -1 : (int)b) : *min;
    if (*max >= 0 && *max < *min) return perr(P, "upper bound smaller than lower bound in {m,n}");
    return 1;
}

/* Parses an atom and its quantifiers; returns the node, -1, or -2 at the end. */
static int parse_repeat(rparser *P, int *icase, int *dotall) {
    int k = parse_atom(P, icase, dotall);
    if (k < 0) return k;
    for (;;) {
        int32_t c = peek_cp(P);
        int min = 0, max = 0, interval = 0;
        if (c == '*') { min = 0; max = -1; }
        else if (c == '+') { min = 1; max = -1; }
        else if (c == '?') { min = 0; max = 1; }
        else if (c == '{') {
            int r = parse_interval(P, &min, &max);
            if (r < 0) return -1;
            if (r == 0) break;
            interval = 1;
        } else break;
        if (!interval) P->i++;
        int mode = Q_GREEDY;
        if (peek_cp(P) == '?') { mode = Q_LAZY; P->i++; }
        else if (peek_cp(P) == '+' && !interval) { mode = Q_POSSESSIVE; P->i++; }
        rnode *cn = &P->nodes[k];
        if (cn->type == N_ASSERT || cn->type == N_LOOK || cn->type == N_EMPTY)
            return perr(P, "target of repeat operator is invalid");
        int r = new_node(P, N_REP);
        if (r < 0) return -1;
        P->nodes[r].min = min;
        P->nodes[r].max = max;
        P->nodes[r].mode = (uint8_t)mode;
        if (add_child(P, r, k)) return -1;
        k = r;
    }
    return k;
}

/* Parses a sequence of repeats; returns a CAT node (or the single node), or -1. */
static int parse_seq(rparser *P, int *icase, int *dotall) {
    int cat = new_node(P, N_CAT);
    if (cat < 0) return -1;
    for (;;) {
        int k = parse_repeat(P, icase, dotall);
        if (k == -1) return -1;
        if (k == -2) break;
        if (add_child(P, cat, k)) return -1;
    }
    int n = n_children(P, cat);
    if (n == 0) P->nodes[cat].type = N_EMPTY;
    if (n == 1) return P->nodes[cat].child;
    return cat;
}

/* Parses alternatives separated by '|'; returns the node or -1. Inline options set
 * inside stay local to this group. */
static int parse_alt(rparser *P, int *icase_in, int *dotall_in) {
    int icase = *icase_in, dotall = *dotall_in;
    int first = parse_seq(P, &icase, &dotall);
    if (first < 0) return -1;
    if (peek_cp(P) != '|') return first;
    int alt = new_node(P, N_ALT);
    if (alt < 0 || add_child(P, alt, first)) return -1;
    while (peek_cp(P) == '|') {
        P->i++;
        int k = parse_seq(P, &icase, &dotall);
        if (k < 0 || add_child(P, alt, k)) return -1;
    }
    return alt;
}

/* ---- first sets ---- */

/* Sets bit cp of a first set (ASCII) or its non-ASCII flag. */
static void fs_add(fset *f, uint32_t cp) {
    if (cp < 128) f->ascii[cp >> 6] |= 1ull << (cp & 63);
    else f->nonascii = 1;
}

/* Adds the characters that may start g to f (not g's nullability). */
static void fs_merge(fset *f, const fset *g) {
    f->ascii[0] |= g->ascii[0];
    f->ascii[1] |= g->ascii[1];
    f->nonascii |= g->nonascii;
}

/* Returns the first set of node k, computed once per node (P->node_fs). */
static fset first_of(rparser *P, glm_regex *re, int k) {
    if (P->node_fs_done[k]) return P->node_fs[k];
    rnode *nd = &P->nodes[k];
    fset f = {0};
    switch (nd->type) {
    case N_EMPTY: case N_ASSERT: case N_LOOK:
        f.nullable = 1;
        break;
    case N_CHAR:
        fs_add(&f, nd->cp);
        if (nd->icase) {
            fs_add(&f, glm_fold1(nd->cp));
            fs_add(&f, glm_upper1(nd->cp));
            fs_add(&f, glm_lower1(nd->cp));
            uint32_t fo = glm_fold1(nd->cp);
            if (fo == 's' || fo == 'k') f.nonascii = 1;  /* U+017F, U+212A */
        }
        break;
    case N_CLASS: {
        rclass *c = &re->cls[nd->cls];
        f.ascii[0] = c->ascii[0];
        f.ascii[1] = c->ascii[1];
        f.nonascii = 1;
        break;
    }
    case N_ANY:
        f.ascii[0] = f.ascii[1] = ~0ull;
        if (!nd->dotall) f.ascii[0] &= ~(1ull << '\n');
        f.nonascii = 1;
        break;
    case N_CAT:
        f.nullable = 1;
        for (int c = nd->child; c >= 0; c = P->nodes[c].next) {
            fset g = first_of(P, re, c);
            fs_merge(&f, &g);
            if (!g.nullable) {
                f.nullable = 0;
                break;
            }
        }
        break;
    case N_ALT:
        for (int c = nd->child; c >= 0; c = P->nodes[c].next) {
            fset g = first_of(P, re, c);
            fs_merge(&f, &g);
            f.nullable |= g.nullable;
        }
        break;
    case N_REP: case N_ATOMIC:
        f = first_of(P, re, nd->child);
        if (nd->type == N_REP && nd->min == 0) f.nullable = 1;
        break;
    }
    P->node_fs[k] = f;
    P->node_fs_done[k] = 1;
    return f;
}

/* Stores a first set; returns its index or -1. */
static int fs_store(rparser *P, const fset *f) {
    if (grow((void **)&P->fs, &P->cap_fs, P->n_fs, sizeof(fset))) return perr(P, "out of memory");
    P->fs[P->n_fs] = *f;
    return P->n_fs++;
}

/* ---- code generation ---- */

/* Appends an instruction; returns its index or -1. */
static int emit(rparser *P, int op) {
    if (P->n_code >= RE_MAX_INST) return perr(P, "pattern too large after expanding repeats");
    if (grow((void **)&P->code, &P->cap_code, P->n_code, sizeof(rinst))) return perr(P, "out of memory");
    rinst *in = &P->code[P->n_code];
    memset(in, 0, sizeof *in);
    in->op = (uint8_t)op;
    in->fa = in->fb = -1;
    return P->n_code++;
}

static int gen(rparser *P, glm_regex *re, int k);

/* Emits one single-character matcher for node k (CHAR, CLASS or ANY); returns 0/-1. */
static int gen_single(rparser *P, int k) {
    rnode *nd = &P->nodes[k];
    int op = nd->type == N_CHAR ? OP_CHAR : nd->type == N_CLASS ? OP_CLASS : OP_ANY;
    int pc = emit(P, op);
    if (pc < 0) return -1;
    rinst *in = &P->code[pc];
    in->cp = nd->cp;
    in->icase = nd->icase;
    in->fold = nd->icase ? glm_fold1(nd->cp) : nd->cp;
    in->a = nd->cls;
    in->mode = nd->dotall;
    return 0;
}

/* Returns the index of a new SPLIT instruction; the caller fills its targets and first sets. */
static int emit_split(rparser *P) {
    return emit(P, OP_SPLIT);
}

/* Returns non-zero when node k compiles to at least one instruction. */
static int emits_code(const rparser *P, int k) {
    const rnode *nd = &P->nodes[k];
    switch (nd->type) {
    case N_EMPTY: return 0;
    case N_CAT:
        for (int c = nd->child; c >= 0; c = P->nodes[c].next)
            if (emits_code(P, c)) return 1;
        return 0;
    case N_REP: return emits_code(P, nd->child);
    }
    return 1;
}

/* Emits code for a repeat node k; returns 0 or -1. */
static int gen_rep(rparser *P, glm_regex *re, int k) {
    rnode nd = P->nodes[k];
    int ch = nd.child;
    int ct = P->nodes[ch].type;
    if (ct == N_CHAR || ct == N_CLASS || ct == N_ANY) {
        int pc = emit(P, OP_REP);
        if (pc < 0) return -1;
        P->code[pc].a = nd.min;
        P->code[pc].b = nd.max;
        P->code[pc].mode = nd.mode;
        return gen_single(P, ch);
    }
    if (nd.mode == Q_POSSESSIVE) {
        /* X*+ is (?>X*) */
        int pc = emit(P, OP_ATOMIC);
        if (pc < 0) return -1;
        P->nodes[k].mode = Q_GREEDY;
        int r = gen_rep(P, re, k);
        P->nodes[k].mode = Q_POSSESSIVE;
        if (r < 0 || emit(P, OP_MATCH) < 0) return -1;
        P->code[pc].a = pc + 1;
        P->code[pc].b = P->n_code;
        return 0;
    }
    /* a body that compiles to nothing ((?i), an empty group) repeats to nothing; this
     * also keeps {m}{n}... over such a body from looping m*n... times */
    if (!emits_code(P, ch)) return 0;
    for (int i = 0; i < nd.min; i++)
        if (gen(P, re, ch) < 0) return -1;
    fset fc = first_of(P, re, ch);
    int fci = fs_store(P, &fc);
    if (fci < 0) return -1;
    int lazy = nd.mode == Q_LAZY;
    if (nd.max < 0) {
        int null = fc.nullable;
        int slot = null ? P->n_slots++ : -1;
        int L = emit_split(P);
        if (L < 0) return -1;
        int body = P->n_code;
        if (null) {
            int s = emit(P, OP_NULL_START);
            if (s < 0) return -1;
            P->code[s].a = slot;
        }
        if (gen(P, re, ch) < 0) return -1;
        int ne = -1;
        if (null) {
            ne = emit(P, OP_NULL_END);
            if (ne < 0) return -1;
            P->code[ne].a = slot;
        }
        int j = emit(P, OP_JMP);
        if (j < 0) return -1;
        P->code[j].a = L;
        int exit = P->n_code;
        if (ne >= 0) P->code[ne].b = exit;
        rinst *s = &P->code[L];
        s->a = lazy ? exit : body;
        s->b = lazy ? body : exit;
        s->fa = lazy ? -1 : fci;
        s->fb = lazy ? fci : -1;
        return 0;
    }
    int n_opt = nd.max - nd.min;
    int *splits = n_opt ? malloc(sizeof(int) * (size_t)n_opt) : NULL;
    if (n_opt && !splits) return perr(P, "out of memory");
    for (int i = 0; i < n_opt; i++) {
        splits[i] = emit_split(P);
        if (splits[i] < 0 || gen(P, re, ch) < 0) { free(splits); return -1; }
    }
    int exit = P->n_code;
    for (int i = 0; i < n_opt; i++) {
        rinst *s = &P->code[splits[i]];
        int body = splits[i] + 1;
        s->a = lazy ? exit : body;
        s->b = lazy ? body : exit;
        s->fa = lazy ? -1 : fci;
        s->fb = lazy ? fci : -1;
    }
    free(splits);
    return 0;
}

/* Emits code for node k; returns 0 or -1. */
static int gen(rparser *P, glm_regex *re, int k) {
    /* a repeat emits its body again for each copy: bounded by the instructions emitted,
     * and by the nodes visited for bodies that emit little ((?i) by the thousand) */
    if (++P->gen_visits > RE_MAX_GEN) return perr(P, "pattern too large after expanding repeats");
    rnode *nd = &P->nodes[k];
    switch (nd->type) {
    case N_EMPTY: return 0;
    case N_CHAR: case N_CLASS: case N_ANY: return gen_single(P, k);
    case N_CAT:
        for (int c = nd->child; c >= 0; c = P->nodes[c].next)
            if (gen(P, re, c) < 0) return -1;
        return 0;
    case N_ALT: {
        /* rest[i]: the first set of the alternatives after child i (what its SPLIT's
         * second branch may start with), computed from the back in one pass */
        int n = n_children(P, k), i = n;
        int *jumps = malloc(sizeof(int) * (size_t)n);
        fset *rest = calloc((size_t)n, sizeof(fset));
        if (!jumps || !rest) { free(jumps); free(rest); return perr(P, "out of memory"); }
        int *kids = jumps;  /* the children in order, until jumps are filled */
        for (int c = P->nodes[k].child, j = 0; c >= 0; c = P->nodes[c].next) kids[j++] = c;
        for (fset acc = {0}; i-- > 0;) {
            rest[i] = acc;
            fset g = first_of(P, re, kids[i]);
            fs_merge(&acc, &g);
            acc.nullable |= g.nullable;
        }
        i = 0;
        for (int c = P->nodes[k].child; c >= 0; c = P->nodes[c].next, i++) {
            int last = P->nodes[c].next < 0;
            int sp = -1;
            if (!last) {
                sp = emit_split(P);
                if (sp < 0) { free(jumps); free(rest); return -1; }
                fset fa = first_of(P, re, c);
                int ia = fs_store(P, &fa), ib = fs_store(P, &rest[i]);
                if (ia < 0 || ib < 0) { free(jumps); free(rest); return -1; }
                P->code[sp].fa = ia;
                P->code[sp].fb = ib;
                P->code[sp].a = sp + 1;
            }
            if (gen(P, re, c) < 0) { free(jumps); free(rest); return -1; }
            jumps[i] = -1;
            if (!last) {
                jumps[i] = emit(P, OP_JMP);
                if (jumps[i] < 0) { free(jumps); free(rest); return -1; }
                P->code[sp].b = P->n_code;
            }
        }
        for (i = 0; i < n; i++)
            if (jumps[i] >= 0) P->code[jumps[i]].a = P->n_code;
        free(jumps);
        free(rest);
        return 0;
    }
    case N_REP: return gen_rep(P, re, k);
    case N_LOOK: case N_ATOMIC: {
        int pc = emit(P, nd->type == N_LOOK ? OP_LOOK : OP_ATOMIC);
        if (pc < 0) return -1;
        P->code[pc].mode = P->nodes[k].neg;
        if (gen(P, re, P->nodes[k].child) < 0 || emit(P, OP_MATCH) < 0) return -1;
        P->code[pc].a = pc + 1;
        P->code[pc].b = P->n_code;
        return 0;
    }
    case N_ASSERT: {
        int pc = emit(P, OP_ASSERT);
        if (pc < 0) return -1;
        P->code[pc].mode = (uint8_t)P->nodes[k].akind;
        return 0;
    }
    }
    return perr(P, "internal: unknown node");
}

/* Returns 0 and the compiled regex, or -1 with err set. */
int glm_regex_compile(const char *pat, size_t len, glm_regex **out, char *err, size_t err_len) {
    rparser P = {0};
    glm_regex *re = calloc(1, sizeof *re);
    *out = NULL;
    if (!re) {
        if (err && err_len) snprintf(err, err_len, "out of memory");
        return -1;
    }
    P.p = (const uint8_t *)pat;
    P.n = len;
    P.err = err;
    P.err_len = err_len;
    if (glm_utf8_check(P.p, len) != len) {
        perr(&P, "pattern is not valid UTF-8");
        goto fail;
    }
    int icase = 0, dotall = 0;
    int root = parse_alt(&P, &icase, &dotall);
    if (root < 0) goto fail;
    if (P.i < P.n) {
        perr(&P, "unmatched )");
        goto fail;
    }
    /* classes must be final before first sets use their ASCII tables */
    re->cls = P.cls;
    re->n_cls = P.n_cls;
    re->items = P.items;
    re->n_items = P.n_items;
    for (int k = 0; k < re->n_cls; k++) class_finish(re, k);
    P.node_fs = malloc(sizeof(fset) * (size_t)P.n_nodes);
    P.node_fs_done = calloc((size_t)P.n_nodes, 1);
    if (!P.node_fs || !P.node_fs_done) {
        perr(&P, "out of memory");
        goto fail;
    }
    if (gen(&P, re, root) < 0 || emit(&P, OP_MATCH) < 0) goto fail;
    fset fr = first_of(&P, re, root);
    re->root_fs = fs_store(&P, &fr);
    if (re->root_fs < 0) goto fail;
    re->code = P.code;
    re->n_code = P.n_code;
    re->fs = P.fs;
    re->n_fs = P.n_fs;
    re->n_slots = P.n_slots;
    free(P.nodes);
    free(P.node_fs);
    free(P.node_fs_done);
    *out = re;
    return 0;
fail:
    free(P.nodes);
    free(P.node_fs);
    free(P.node_fs_done);
    free(P.cls);
    free(P.items);
    free(P.code);
    free(P.fs);
    free(re);
    return -1;
}

/* Releases a compiled regex (NULL is fine). */
void glm_regex_free(glm_regex *re) {
    if (!re) return;
    free(re->code);
    free(re->cls);
    free(re->items);
    free(re->fs);
    free(re);
}

/* Releases a search scratch and zeroes it for reuse. */
void glm_regex_scratch_free(glm_regex_scratch *scr) {
    free(scr->stack);
    free(scr->slots);
    memset(scr, 0, sizeof *scr);
}

/* ---- matcher ---- */
enum { BT_ALT, BT_REP_GREEDY, BT_REP_LAZY, BT_SLOT };

typedef struct {
    int32_t pc, kind;
    size_t pos, aux;
} btent;

/* Returns non-zero when the first set fi allows the text at pos. */
static inline int fs_allows(const glm_regex *re, int fi, const uint8_t *s, size_t n, size_t pos) {
    if (fi < 0) return 1;
    const fset *f = &re->fs[fi];
    if (f->nullable) return 1;
    if (pos >= n) return 0;
    uint8_t c = s[pos];
    if (c >= 128) return f->nonascii;
    return (int)((f->ascii[c >> 6] >> (c & 63)) & 1);
}

/* Decodes the non-ASCII character at s[pos] (pos < n); returns its byte length, or 0
 * when its sequence would run past n. (In invalid UTF-8 the bytes decode to whatever
 * their lead byte says, within n.) */
static inline int char_at_multi(const uint8_t *s, size_t n, size_t pos, uint32_t *cp) {
    uint8_t c = s[pos];
    size_t l = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if (l > n - pos) return 0;
    return glm_utf8_decode(s, pos, cp);
}

/* Decodes the character at s[pos] (pos < n); returns its byte length, or 0 (above). */
static inline int char_at(const uint8_t *s, size_t n, size_t pos, uint32_t *cp) {
    if (s[pos] < 0x80) {
        *cp = s[pos];
        return 1;
    }
    return char_at_multi(s, n, pos, cp);
}

/* Returns the byte length matched by single-character instruction in at pos, or 0.
 * (Always inlined: the matcher's hot path.) */
static inline __attribute__((always_inline)) int match_one(const glm_regex *re, const rinst *in, const uint8_t *s, size_t n, size_t pos) {
    if (pos >= n) return 0;
    uint32_t cp;
    int l;
    if (s[pos] < 0x80) {
        cp = s[pos];
        l = 1;
    } else if (!(l = char_at_multi(s, n, pos, &cp))) {
        return 0;
    }
    switch (in->op) {
    case OP_CHAR:
        if (cp == in->cp) return l;
        if (in->icase && glm_fold1(cp) == in->fold) return l;
        return 0;
    case OP_CLASS:
        return class_match(re, &re->cls[in->a], cp) ? l : 0;
    case OP_ANY:
        return (cp != '\n' || in->mode) ? l : 0;
    }
    return 0;
}

/* Returns the start of the character before pos. */
static inline size_t prev_char(const uint8_t *s, size_t pos) {
    do pos--; while (pos > 0 && (s[pos] & 0xC0) == 0x80);
    return pos;
}

/* Returns non-zero when the character ending before pos / starting at pos is a word character. */
static int word_at(const uint8_t *s, size_t n, size_t pos, int before) {
    if (before ? pos == 0 : pos >= n) return 0;
    size_t q = before ? prev_char(s, pos) : pos;
    uint32_t cp;
    if (!char_at(s, n, q, &cp)) return 0;
    citem w = {CI_WORD, 0, 0, 0, 0, 0};
    return item_match(NULL, &w, cp);
}

/* The limits of one search: backtracks and steps left; err says which failure ended it. */
typedef struct {
    long retries, steps;
    int err;  /* -1 a limit, -2 out of memory */
} vm_limits;

/* Pushes a backtrack entry; returns 0, or -1 (lim->err set) past RE_MAX_STACK entries
 * or when out of memory. */
static inline int push(glm_regex_scratch *scr, vm_limits *lim, int32_t pc, int32_t kind, size_t pos, size_t aux) {
    if (scr->sp == scr->cap) {
        if (scr->cap >= RE_MAX_STACK) {
            lim->err = -1;
            return -1;
        }
        size_t nc = scr->cap ? scr->cap * 2 : 256;
        void *ns = realloc(scr->stack, nc * sizeof(btent));
        if (!ns) {
            lim->err = -2;
            return -1;
        }
        scr->stack = ns;
        scr->cap = nc;
    }
    btent *e = &((btent *)scr->stack)[scr->sp++];
    e->pc = pc;
    e->kind = kind;
    e->pos = pos;
    e->aux = aux;
    return 0;
}

/* Runs the program from pc at pos; returns the match end, -1 for no match, -2 on
 * error (lim->err: a limit or memory). Every instruction and every character a
 * repeat takes costs a step, every backtrack a retry, inside atomic groups and
 * lookaheads too. Backtrack entries it pushes are gone on return, so lookarounds and
 * atomic groups are atomic as in Oniguruma. */
static long vm_run(const glm_regex *re, glm_regex_scratch *scr, const uint8_t *s, size_t n,
                   int pc, size_t pos, vm_limits *lim) {
    size_t base = scr->sp;
    const rinst *code = re->code;
    long steps = lim->steps;
    for (;;) {
        if (--steps < 0) goto limit;
        const rinst *in = &code[pc];
        switch (in->op) {
        case OP_CHAR: case OP_CLASS: case OP_ANY: {
            int l = match_one(re, in, s, n, pos);
            if (!l) goto fail;
            pos += (size_t)l;
            pc++;
            continue;
        }
        case OP_SPLIT: {
            int oka = fs_allows(re, in->fa, s, n, pos);
            int okb = fs_allows(re, in->fb, s, n, pos);
            if (oka && okb) {
                if (push(scr, lim, in->b, BT_ALT, pos, 0)) goto error;
                pc = in->a;
            } else if (oka) {
                pc = in->a;
            } else if (okb) {
                pc = in->b;
            } else {
                goto fail;
            }
            continue;
        }
        case OP_JMP:
            pc = in->a;
            continue;
        case OP_REP: {
            const rinst *op = in + 1;
            int min = in->a, max = in->b;
            size_t p = pos;
            int cnt = 0;
            for (; cnt < min; cnt++) {
                int l = match_one(re, op, s, n, p);
                if (!l) break;
                p += (size_t)l;
            }
            if (cnt < min) {
                steps -= cnt;
                goto fail;
            }
            if (in->mode == Q_LAZY) {
                steps -= cnt;
                if ((max < 0 || cnt < max) && push(scr, lim, pc, BT_REP_LAZY, p, (size_t)cnt)) goto error;
                pos = p;
                pc += 2;
                continue;
            }
            /* greedy backtracking gives characters back down to floor, the end of the
             * first min */
            size_t floor = p;
            while (max < 0 || cnt < max) {
                int l = match_one(re, op, s, n, p);
                if (!l) break;
                p += (size_t)l;
                cnt++;
            }
            steps -= cnt;
            if (p > floor && in->mode == Q_GREEDY && push(scr, lim, pc, BT_REP_GREEDY, p, floor)) goto error;
            pos = p;
            pc += 2;
            continue;
        }
        case OP_LOOK: case OP_ATOMIC: {
            lim->steps = steps;
            long r = vm_run(re, scr, s, n, in->a, pos, lim);
            steps = lim->steps;
            if (r == -2) return -2;
            if (in->op == OP_LOOK) {
                if ((r >= 0) == (in->mode != 0)) goto fail;
            } else {
                if (r < 0) goto fail;
                pos = (size_t)r;
            }
            pc = in->b;
            continue;
        }
        case OP_ASSERT: {
            int ok = 0;
            switch (in->mode) {
            case A_BOL: ok = pos == 0 || s[pos - 1] == '\n'; break;
            case A_EOL: ok = pos == n || s[pos] == '\n'; break;
            case A_BOS: ok = pos == 0; break;
            case A_EOS: ok = pos == n; break;
            case A_EOS_NL: ok = pos == n || (pos + 1 == n && s[pos] == '\n'); break;
            case A_WORDB: ok = word_at(s, n, pos, 1) != word_at(s, n, pos, 0); break;
            case A_NWORDB: ok = word_at(s, n, pos, 1) == word_at(s, n, pos, 0); break;
            }
            if (!ok) goto fail;
            pc++;
            continue;
        }
        case OP_NULL_START:
            if (push(scr, lim, in->a, BT_SLOT, scr->slots[in->a], 0)) goto error;
            scr->slots[in->a] = pos;
            pc++;
            continue;
        case OP_NULL_END:
            /* an iteration that consumed nothing ends the loop (Oniguruma's empty check) */
            pc = scr->slots[in->a] == pos ? in->b : pc + 1;
            continue;
        case OP_MATCH:
            scr->sp = base;
            lim->steps = steps;
            return (long)pos;
        }
    fail:
        for (;;) {
            if (scr->sp == base) {
                lim->steps = steps;
                return -1;
            }
            if (--lim->retries < 0 || --steps < 0) goto limit;
            btent e = ((btent *)scr->stack)[--scr->sp];
            if (e.kind == BT_SLOT) {
                scr->slots[e.pc] = e.pos;
                continue;
            }
            if (e.kind == BT_ALT) {
                pc = e.pc;
                pos = e.pos;
                break;
            }
            const rinst *rin = &code[e.pc];
            if (e.kind == BT_REP_GREEDY) {
                /* one character back, never below the floor (in invalid UTF-8 the
                 * continuation bytes need not lead back to where the repeat was) */
                size_t p = prev_char(s, e.pos);
                if (p < e.aux) p = e.aux;
                if (p > e.aux && push(scr, lim, e.pc, BT_REP_GREEDY, p, e.aux)) goto error;
                pos = p;
                pc = e.pc + 2;
                break;
            }
            /* lazy: take one more */
            int l = match_one(re, rin + 1, s, n, e.pos);
            if (!l) continue;
            size_t cnt = e.aux + 1;
            size_t p = e.pos + (size_t)l;
            if ((rin->b < 0 || cnt < (size_t)rin->b) && push(scr, lim, e.pc, BT_REP_LAZY, p, cnt)) goto error;
            pos = p;
            pc = e.pc + 2;
            break;
        }
    }
limit:
    lim->err = -1;
error:
    scr->sp = base;
    lim->steps = steps;
    return -2;
}

/* Returns 1 with the leftmost match, 0 when none, -1 at a limit, -2 out of memory. */
int glm_regex_search(const glm_regex *re, glm_regex_scratch *scr, const uint8_t *s, size_t n,
                     size_t from, size_t *ms, size_t *me) {
    if ((size_t)re->n_slots > scr->n_slots) {
        size_t *ns = realloc(scr->slots, sizeof(size_t) * (size_t)re->n_slots);
        if (!ns) return -2;
        scr->slots = ns;
        scr->n_slots = (size_t)re->n_slots;
    }
    const fset *rf = &re->fs[re->root_fs];
    /* the run's budget when there is one, else this search's (no overflow: n is far
     * below 2^63 / 1000) */
    vm_limits lim;
    lim.retries = RE_RETRY_LIMIT;
    if (scr->steps_max) {
        if (scr->steps_used >= scr->steps_max) return -1;
        uint64_t left = scr->steps_max - scr->steps_used;
        lim.steps = left < (uint64_t)LONG_MAX ? (long)left : LONG_MAX;
    } else {
        lim.steps = (long)(GLM_REGEX_STEPS_BASE + GLM_REGEX_STEPS_PER_BYTE * n);
    }
    const long steps0 = lim.steps;
    int r = 0;
    for (size_t pos = from; pos <= n;) {
        int try_here = 1;
        if (!rf->nullable) {
            if (pos >= n) break;
            uint8_t c = s[pos];
            try_here = c >= 128 ? rf->nonascii : (int)((rf->ascii[c >> 6] >> (c & 63)) & 1);
        }
        if (try_here) {
            scr->sp = 0;
            long e = vm_run(re, scr, s, n, 0, pos, &lim);
            if (e == -2) {
                r = lim.err;
                break;
            }
            if (e >= 0) {
                *ms = pos;
                *me = (size_t)e;
                r = 1;
                break;
            }
        } else if (--lim.steps < 0) {
            r = -1;
            break;
        }
        if (pos >= n) break;
        uint8_t c = s[pos];
        pos += c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    }
    scr->steps_used += (uint64_t)(steps0 - (lim.steps < 0 ? 0 : lim.steps));
    return r;
}

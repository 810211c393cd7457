/* test-sampler.c - the sampler's filters and penalties on hand-made logits, and
 * the empirical distribution of seeded draws against the softmax it should follow. */
#include "glm.h"
#include "test.h"

static glm_sampler *make(float temp, int top_k, float top_p, float min_p, uint64_t seed) {
    glm_sampler_params p = glm_sampler_default_params();
    p.temp = temp; p.top_k = top_k; p.top_p = top_p; p.min_p = min_p; p.seed = seed;
    return glm_sampler_new(&p);
}

TEST(greedy_picks_argmax) {
    float l[6] = { 0.1f, 2.0f, -1.0f, 3.5f, 3.4f, 0.0f };
    glm_sampler *s = make(0, 0, 1, 0, 1);
    CHECK(glm_sampler_sample(s, l, 6, NULL, 0) == 3);
    glm_sampler_free(s);
}

TEST(top_k_one_is_greedy) {
    float l[5] = { 1, 5, 2, 4.9f, 0 };
    glm_sampler *s = make(1.5f, 1, 1, 0, 42);
    for (int i = 0; i < 50; i++) CHECK(glm_sampler_sample(s, l, 5, NULL, 0) == 1);
    glm_sampler_free(s);
}

TEST(top_k_limits_candidates) {
    float l[8] = { 0, 1, 2, 3, 4, 5, 6, 7 };
    glm_sampler *s = make(100.0f, 3, 1, 0, 7);
    int seen[8] = {0};
    for (int i = 0; i < 3000; i++) seen[glm_sampler_sample(s, l, 8, NULL, 0)]++;
    for (int i = 0; i < 5; i++) CHECK(seen[i] == 0);
    for (int i = 5; i < 8; i++) CHECK(seen[i] > 800); /* nearly uniform at high temperature */
    glm_sampler_free(s);
}

TEST(distribution_matches_softmax) {
    float l[4] = { 0.0f, 1.0f, 2.0f, 0.5f };
    double z = 0, p[4];
    for (int i = 0; i < 4; i++) z += exp(l[i]);
    for (int i = 0; i < 4; i++) p[i] = exp(l[i]) / z;
    glm_sampler *s = make(1.0f, 0, 1.0f, 0, 1234);
    int seen[4] = {0}, n = 40000;
    for (int i = 0; i < n; i++) seen[glm_sampler_sample(s, l, 4, NULL, 0)]++;
    for (int i = 0; i < 4; i++) CHECK_NEAR((double)seen[i] / n, p[i], 0.01);
    glm_sampler_free(s);
}

TEST(top_p_and_min_p_cut_the_tail) {
    /* probabilities about 0.64, 0.24, 0.09, 0.03 at temp 1 */
    float l[4] = { 3.0f, 2.0f, 1.0f, 0.0f };
    glm_sampler *s = make(1.0f, 0, 0.85f, 0, 5);
    int seen[4] = {0};
    for (int i = 0; i < 5000; i++) seen[glm_sampler_sample(s, l, 4, NULL, 0)]++;
    CHECK(seen[2] == 0 && seen[3] == 0 && seen[1] > 0);
    glm_sampler_free(s);
    s = make(1.0f, 0, 1.0f, 0.2f, 5); /* keeps p >= 0.2 * 0.64 */
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < 5000; i++) seen[glm_sampler_sample(s, l, 4, NULL, 0)]++;
    CHECK(seen[2] == 0 && seen[3] == 0 && seen[1] > 0);
    glm_sampler_free(s);
}

TEST(seed_reproducible) {
    float l[16];
    for (int i = 0; i < 16; i++) l[i] = (float)((i * 7) % 5);
    glm_sampler *a = make(1.0f, 0, 1, 0, 99), *b = make(1.0f, 0, 1, 0, 99), *c = make(1.0f, 0, 1, 0, 100);
    int same = 1, diff = 0;
    for (int i = 0; i < 200; i++) {
        int x = glm_sampler_sample(a, l, 16, NULL, 0), y = glm_sampler_sample(b, l, 16, NULL, 0), z = glm_sampler_sample(c, l, 16, NULL, 0);
        same &= x == y;
        diff += x != z;
    }
    CHECK(same);
    CHECK(diff > 0);
    glm_sampler_free(a); glm_sampler_free(b); glm_sampler_free(c);
}

TEST(penalties) {
    float l[3] = { 2.0f, 1.9f, -1.0f };
    int32_t hist[2] = { 0, 0 };
    glm_sampler_params p = glm_sampler_default_params();
    p.temp = 0;
    p.repeat_penalty = 1.2f; /* 2.0 / 1.2 = 1.67 < 1.9 */
    glm_sampler *s = glm_sampler_new(&p);
    CHECK(glm_sampler_sample(s, l, 3, hist, 2) == 1);
    CHECK(glm_sampler_sample(s, l, 3, NULL, 0) == 0);
    glm_sampler_free(s);
    p.repeat_penalty = 1.0f;
    p.frequency_penalty = 0.06f; /* 2.0 - 2 * 0.06 = 1.88 < 1.9 */
    s = glm_sampler_new(&p);
    CHECK(glm_sampler_sample(s, l, 3, hist, 2) == 1);
    glm_sampler_free(s);
    p.frequency_penalty = 0;
    p.presence_penalty = 0.05f; /* 1.95 > 1.9 */
    s = glm_sampler_new(&p);
    CHECK(glm_sampler_sample(s, l, 3, hist, 2) == 0);
    glm_sampler_free(s);
    p.repeat_last_n = 1;
    p.presence_penalty = 0.2f;
    int32_t h2[2] = { 1, 0 }; /* only the last token counts */
    s = glm_sampler_new(&p);
    CHECK(glm_sampler_sample(s, l, 3, h2, 2) == 1);
    glm_sampler_free(s);
}

RUN_TESTS()

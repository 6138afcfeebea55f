/*
 * test.h — the smallest harness that reports where a check failed.
 * A test file defines main(), calls its test functions, returns aor_test_done().
 */
#ifndef AOR_TEST_H
#define AOR_TEST_H

#include <stdio.h>
#include <string.h>

static int aor_test_failures, aor_test_checks;

#define CHECK(cond)                                                                                                                \
    do {                                                                                                                           \
        ++aor_test_checks;                                                                                                         \
        if (!(cond)) {                                                                                                             \
            ++aor_test_failures;                                                                                                   \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);                                               \
        }                                                                                                                          \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                                                         \
    do {                                                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                                                        \
        ++aor_test_checks;                                                                                                         \
        if (a_ != b_) {                                                                                                            \
            ++aor_test_failures;                                                                                                   \
            fprintf(stderr, "%s:%d: %s == %lld, expected %lld\n", __FILE__, __LINE__, #a, a_, b_);                                 \
        }                                                                                                                          \
    } while (0)

#define CHECK_EQ_STR(a, b)                                                                                                         \
    do {                                                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                                                           \
        ++aor_test_checks;                                                                                                         \
        if (a_ == NULL || b_ == NULL ? a_ != b_ : strcmp(a_, b_) != 0) {                                                           \
            ++aor_test_failures;                                                                                                   \
            fprintf(stderr, "%s:%d: %s == \"%s\", expected \"%s\"\n", __FILE__, __LINE__, #a, a_ ? a_ : "(null)",                  \
                    b_ ? b_ : "(null)");                                                                                           \
        }                                                                                                                          \
    } while (0)

static inline int aor_test_done(const char *name)
{
    fprintf(stderr, "%s: %d checks, %d failed\n", name, aor_test_checks, aor_test_failures);
    return aor_test_failures != 0;
}

#endif

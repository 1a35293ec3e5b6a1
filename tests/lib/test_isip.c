/* SPDX-License-Identifier: MIT */
/*
 * isIP / isIPv4 / isIPv6: every row of the reference tables (Node v0.10's test-net-isip.js
 * and modern Node's test-net-isip{,v4,v6}.js), one Check test per row.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include <netd/net.h>

#define N_ELEMS(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Node's isIP(x) is defined by its two halves; every row re-checks that agreement so a
 * parser that answers isIP and isIPv4/6 differently cannot pass on the tables alone. */
static void check_consistent(const char *in)
{
    int ip = nd_is_ip(in);
    ck_assert_msg(ip == 0 || ip == 4 || ip == 6, "isIP(\"%s\") = %d", in ? in : "(null)", ip);
    ck_assert_msg(nd_is_ipv4(in) == (ip == 4), "isIPv4(\"%s\") disagrees with isIP = %d",
                  in ? in : "(null)", ip);
    ck_assert_msg(nd_is_ipv6(in) == (ip == 6), "isIPv6(\"%s\") disagrees with isIP = %d",
                  in ? in : "(null)", ip);
}

struct ip_row {
    const char *in; /* NULL stands for undefined and null */
    int want;
};

/* ---------------------------------------------------------------- 3a, Node v0.10 */

/* test/simple/test-net-isip.js of v0.10, in its order. */
static const struct ip_row v010_isip[] = {
    {"127.0.0.1", 4},
    {"x127.0.0.1", 0},
    {"example.com", 0},
    {"0000:0000:0000:0000:0000:0000:0000:0000", 6},
    {"0000:0000:0000:0000:0000:0000:0000:0000::0000", 0},
    {"1050:0:0:0:5:600:300c:326b", 6},
    {"2001:252:0:1::2008:6", 6},
    {"2001:dead:beef:1::2008:6", 6},
    {"2001::", 6},
    {"2001:dead::", 6},
    {"2001:dead:beef::", 6},
    {"2001:dead:beef:1::", 6},
    {"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 6},
    {":2001:252:0:1::2008:6:", 0},
    {":2001:252:0:1::2008:6", 0},
    {"2001:252:0:1::2008:6:", 0},
    {"2001:252::1::2008:6", 0},
    {"::2001:252:1:2008:6", 6},
    {"::2001:252:1:1.1.1.1", 6},
    {"::2001:252:1:255.255.255.255", 6},
    {"::2001:252:1:255.255.255.255.76", 0},
    {"::anything", 0},
    {"::1", 6},
    {"::", 6},
    {"0000:0000:0000:0000:0000:0000:12345:0000", 0},
    {"0", 0},
    {NULL, 0}, /* isIP() with no argument */
    {"", 0},
};

static const struct ip_row v010_isipv4[] = {
    {"127.0.0.1", 1},
    {"example.com", 0},
    {"2001:252:0:1::2008:6", 0},
};

static const struct ip_row v010_isipv6[] = {
    {"127.0.0.1", 0},
    {"example.com", 0},
    {"2001:252:0:1::2008:6", 1},
};

/* ------------------------------------------------------- 3a, rows only modern Node has */

/* Non-string arguments are stringified by Node before parsing; the C API takes the
 * string it would have produced (undefined and null map to NULL). */
static const struct ip_row modern_isip[] = {
    {"fe80::2008%eth0", 6},
    {"fe80::2008%eth0.0", 6},
    {"fe80::2008%eth0@1", 0},
    {NULL, 0},                           /* null */
    {"123", 0},                          /* 123 */
    {"true", 0},                         /* true */
    {"[object Object]", 0},              /* {} */
    {"::2001:252:1:255.255.255.255", 6}, /* toString objects */
    {"127.0.0.1", 4},
    {"bla", 0},
};

static const struct ip_row modern_isipv4[] = {
    {"127.0.0.1", 1},
    {"example.com", 0},
    {"2001:252:0:1::2008:6", 0},
    {NULL, 0},
    {"", 0},
    {"123", 0},
    {"true", 0},
    {"[object Object]", 0},
    {"::2001:252:1:255.255.255.255", 0},
    {"127.0.0.1", 1},
    {"bla", 0},
};

static const struct ip_row modern_isipv6[] = {
    {"127.0.0.1", 0},
    {"example.com", 0},
    {"2001:252:0:1::2008:6", 1},
    {NULL, 0},
    {"", 0},
    {"123", 0},
    {"true", 0},
    {"[object Object]", 0},
    {"::2001:252:1:255.255.255.255", 1},
    {"127.0.0.1", 0},
    {"bla", 0},
};

/* -------------------------------------------------- 3b and 3c, modern isIPv4 / isIPv6 */

/* test-net-isipv4.js */
static const char *const ipv4_true[] = {
    "0.0.0.0",        "8.8.8.8",        "127.0.0.1",    "100.100.100.100",
    "192.168.0.1",    "18.101.25.153",  "123.23.34.2",  "172.26.168.134",
    "212.58.241.131", "128.0.0.0",      "23.71.254.72", "223.255.255.255",
    "192.0.2.235",    "99.198.122.146", "46.51.197.88", "173.194.34.134",
};

static const char *const ipv4_false[] = {
    ".100.100.100.100", "100..100.100.100.",   "100.100.100.100.",     "999.999.999.999",
    "256.256.256.256",  "256.100.100.100.100", "123.123.123",          "http://123.123.123",
    "1000.2.3.4",       "999.2.3.4",           "0000000192.168.0.200", "192.168.0.2000000000",
};

/* test-net-isipv6.js; the first false entry is the empty string */
static const char *const ipv6_true[] = {
    "::",
    "1::",
    "::1",
    "1::8",
    "1::7:8",
    "1:2:3:4:5:6:7:8",
    "1:2:3:4:5:6::8",
    "1:2:3:4:5:6:7::",
    "1:2:3:4:5::7:8",
    "1:2:3:4:5::8",
    "1:2:3::8",
    "1::4:5:6:7:8",
    "1::6:7:8",
    "1::3:4:5:6:7:8",
    "1:2:3:4::6:7:8",
    "1:2::4:5:6:7:8",
    "::2:3:4:5:6:7:8",
    "1:2::8",
    "2001:0000:1234:0000:0000:C1C0:ABCD:0876",
    "3ffe:0b00:0000:0000:0001:0000:0000:000a",
    "FF02:0000:0000:0000:0000:0000:0000:0001",
    "0000:0000:0000:0000:0000:0000:0000:0001",
    "0000:0000:0000:0000:0000:0000:0000:0000",
    "::ffff:192.168.1.26",
    "2::10",
    "ff02::1",
    "fe80::",
    "2002::",
    "2001:db8::",
    "2001:0db8:1234::",
    "::ffff:0:0",
    "::ffff:192.168.1.1",
    "1:2:3:4::8",
    "1::2:3:4:5:6:7",
    "1::2:3:4:5:6",
    "1::2:3:4:5",
    "1::2:3:4",
    "1::2:3",
    "::2:3:4:5:6:7",
    "::2:3:4:5:6",
    "::2:3:4:5",
    "::2:3:4",
    "::2:3",
    "::8",
    "1:2:3:4:5:6::",
    "1:2:3:4:5::",
    "1:2:3:4::",
    "1:2:3::",
    "1:2::",
    "1:2:3:4::7:8",
    "1:2:3::7:8",
    "1:2::7:8",
    "1:2:3:4:5:6:1.2.3.4",
    "1:2:3:4:5::1.2.3.4",
    "1:2:3:4::1.2.3.4",
    "1:2:3::1.2.3.4",
    "1:2::1.2.3.4",
    "1::1.2.3.4",
    "1:2:3:4::5:1.2.3.4",
    "1:2:3::5:1.2.3.4",
    "1:2::5:1.2.3.4",
    "1::5:1.2.3.4",
    "1::5:11.22.33.44",
    "fe80::217:f2ff:254.7.237.98",
    "fe80::217:f2ff:fe07:ed62",
    "2001:DB8:0:0:8:800:200C:417A",
    "FF01:0:0:0:0:0:0:101",
    "0:0:0:0:0:0:0:1",
    "0:0:0:0:0:0:0:0",
    "2001:DB8::8:800:200C:417A",
    "FF01::101",
    "0:0:0:0:0:0:13.1.68.3",
    "0:0:0:0:0:FFFF:129.144.52.38",
    "::13.1.68.3",
    "::FFFF:129.144.52.38",
    "fe80:0000:0000:0000:0204:61ff:fe9d:f156",
    "fe80:0:0:0:204:61ff:fe9d:f156",
    "fe80::204:61ff:fe9d:f156",
    "fe80:0:0:0:204:61ff:254.157.241.86",
    "fe80::204:61ff:254.157.241.86",
    "fe80::1",
    "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
    "2001:db8:85a3:0:0:8a2e:370:7334",
    "2001:db8:85a3::8a2e:370:7334",
    "2001:0db8:0000:0000:0000:0000:1428:57ab",
    "2001:0db8:0000:0000:0000::1428:57ab",
    "2001:0db8:0:0:0:0:1428:57ab",
    "2001:0db8:0:0::1428:57ab",
    "2001:0db8::1428:57ab",
    "2001:db8::1428:57ab",
    "::ffff:12.34.56.78",
    "::ffff:0c22:384e",
    "2001:0db8:1234:0000:0000:0000:0000:0000",
    "2001:0db8:1234:ffff:ffff:ffff:ffff:ffff",
    "2001:db8:a::123",
    "::ffff:192.0.2.128",
    "::ffff:c000:280",
    "a:b:c:d:e:f:f1:f2",
    "a:b:c::d:e:f:f1",
    "a:b:c::d:e:f",
    "a:b:c::d:e",
    "a:b:c::d",
    "::a",
    "::a:b:c",
    "::a:b:c:d:e:f:f1",
    "a::",
    "a:b:c::",
    "a:b:c:d:e:f:f1::",
    "a:bb:ccc:dddd:000e:00f:0f::",
    "0:a:0:a:0:0:0:a",
    "0:a:0:0:a:0:0:a",
    "2001:db8:1:1:1:1:0:0",
    "2001:db8:1:1:1:0:0:0",
    "2001:db8:1:1:0:0:0:0",
    "2001:db8:1:0:0:0:0:0",
    "2001:db8:0:0:0:0:0:0",
    "2001:0:0:0:0:0:0:0",
    "A:BB:CCC:DDDD:000E:00F:0F::",
    "0:0:0:0:0:0:0:a",
    "0:0:0:0:a:0:0:0",
    "0:0:0:a:0:0:0:0",
    "a:0:0:a:0:0:a:a",
    "a:0:0:a:0:0:0:a",
    "a:0:0:0:a:0:0:a",
    "a:0:0:0:a:0:0:0",
    "a:0:0:0:0:0:0:0",
    "fe80::7:8%eth0",
    "fe80::7:8%1",
};

static const char *const ipv6_false[] = {
    "",
    "1:",
    ":1",
    "11:36:12",
    "02001:0000:1234:0000:0000:C1C0:ABCD:0876",
    "2001:0000:1234:0000:00001:C1C0:ABCD:0876",
    "2001:0000:1234: 0000:0000:C1C0:ABCD:0876",
    "2001:1:1:1:1:1:255Z255X255Y255",
    "3ffe:0b00:0000:0001:0000:0000:000a",
    "FF02:0000:0000:0000:0000:0000:0000:0000:0001",
    "3ffe:b00::1::a",
    "::1111:2222:3333:4444:5555:6666::",
    "1:2:3::4:5::7:8",
    "12345::6:7:8",
    "1::5:400.2.3.4",
    "1::5:260.2.3.4",
    "1::5:256.2.3.4",
    "1::5:1.256.3.4",
    "1::5:1.2.256.4",
    "1::5:1.2.3.256",
    "1::5:300.2.3.4",
    "1::5:1.300.3.4",
    "1::5:1.2.300.4",
    "1::5:1.2.3.300",
    "1::5:900.2.3.4",
    "1::5:1.900.3.4",
    "1::5:1.2.900.4",
    "1::5:1.2.3.900",
    "1::5:300.300.300.300",
    "1::5:3000.30.30.30",
    "1::400.2.3.4",
    "1::260.2.3.4",
    "1::256.2.3.4",
    "1::1.256.3.4",
    "1::1.2.256.4",
    "1::1.2.3.256",
    "1::300.2.3.4",
    "1::1.300.3.4",
    "1::1.2.300.4",
    "1::1.2.3.300",
    "1::900.2.3.4",
    "1::1.900.3.4",
    "1::1.2.900.4",
    "1::1.2.3.900",
    "1::300.300.300.300",
    "1::3000.30.30.30",
    "::400.2.3.4",
    "::260.2.3.4",
    "::256.2.3.4",
    "::1.256.3.4",
    "::1.2.256.4",
    "::1.2.3.256",
    "::300.2.3.4",
    "::1.300.3.4",
    "::1.2.300.4",
    "::1.2.3.300",
    "::900.2.3.4",
    "::1.900.3.4",
    "::1.2.900.4",
    "::1.2.3.900",
    "::300.300.300.300",
    "::3000.30.30.30",
    "2001:DB8:0:0:8:800:200C:417A:221",
    "FF01::101::2",
    "1111:2222:3333:4444::5555:",
    "1111:2222:3333::5555:",
    "1111:2222::5555:",
    "1111::5555:",
    "::5555:",
    ":::",
    "1111:",
    ":",
    ":1111:2222:3333:4444::5555",
    ":1111:2222:3333::5555",
    ":1111:2222::5555",
    ":1111::5555",
    ":::5555",
    "1.2.3.4:1111:2222:3333:4444::5555",
    "1.2.3.4:1111:2222:3333::5555",
    "1.2.3.4:1111:2222::5555",
    "1.2.3.4:1111::5555",
    "1.2.3.4::5555",
    "1.2.3.4::",
    "fe80:0000:0000:0000:0204:61ff:254.157.241.086",
    "123",
    "ldkfj",
    "2001::FFD3::57ab",
    "2001:db8:85a3::8a2e:37023:7334",
    "2001:db8:85a3::8a2e:370k:7334",
    "1:2:3:4:5:6:7:8:9",
    "1::2::3",
    "1:::3:4:5",
    "1:2:3::4:5:6:7:8:9",
    "::ffff:2.3.4",
    "::ffff:257.1.2.3",
    "::ffff:12345678901234567890.1.26",
    "2001:0000:1234:0000:0000:C1C0:ABCD:0876 0",
    "02001:0000:1234:0000:0000:C1C0:ABCD:0876",
};

/* ------------------------------------------------------------------ our own choices */

/* Not in any table: decisions this library made where the tables are silent, checked
 * against Node 20's net.isIP so they stay deliberate. */
static const struct ip_row extra_isip[] = {
    {"127.1", 0},      /* inet_aton shorthand */
    {"0x7f.0.0.1", 0}, /* inet_aton hex */
    {"01.2.3.4", 0},   /* leading-zero octet */
    {"1.2.3.04", 0},
    {"00.0.0.0", 0},
    {" 127.0.0.1", 0},
    {"127.0.0.1 ", 0},
    {"127.0.0.1\n", 0},
    {"1.2.3.4%eth0", 0}, /* zones are IPv6 only */
    {"::%eth0", 6},      /* a zone may follow any IPv6 form */
    {"1::%lo", 6},
    {"fe80::1%eth0:1-a.b", 6},
    {"fe80::1%", 0}, /* empty zone */
    {"fe80::1%a%b", 0},
    {"fe80::1%eth 0", 0},
    {"%eth0", 0},
    {"::1.2.3.4%eth0", 6},
    {"1:2:3:4:5:6:7::", 6}, /* "::" standing for one group, at either end */
    {"::2:3:4:5:6:7:8", 6},
    {"1:2:3:4:5:6:7:8::", 0},
    {"::1:2:3:4:5:6:7:8", 0},
    {"1:2:3:4:5:6::1.2.3.4", 0},
    {"::ffff:1.2.3.4.5", 0},
    {"::ffff:1.2.3.", 0},
    {"::ffff:.1.2.3", 0},
    {"1::2:3:4:5:6:7:8:9:a:b:c:d:e:f", 0},
};

START_TEST(test_v010_isip)
{
    const struct ip_row *r = &v010_isip[_i];
    ck_assert_msg(nd_is_ip(r->in) == r->want, "v0.10 isIP(\"%s\") = %d, want %d",
                  r->in ? r->in : "(undefined)", nd_is_ip(r->in), r->want);
    check_consistent(r->in);
}
END_TEST

START_TEST(test_v010_isipv4)
{
    const struct ip_row *r = &v010_isipv4[_i];
    ck_assert_msg(nd_is_ipv4(r->in) == r->want, "v0.10 isIPv4(\"%s\") = %d, want %d", r->in,
                  nd_is_ipv4(r->in), r->want);
    check_consistent(r->in);
}
END_TEST

START_TEST(test_v010_isipv6)
{
    const struct ip_row *r = &v010_isipv6[_i];
    ck_assert_msg(nd_is_ipv6(r->in) == r->want, "v0.10 isIPv6(\"%s\") = %d, want %d", r->in,
                  nd_is_ipv6(r->in), r->want);
    check_consistent(r->in);
}
END_TEST

START_TEST(test_modern_isip)
{
    const struct ip_row *r = &modern_isip[_i];
    ck_assert_msg(nd_is_ip(r->in) == r->want, "isIP(\"%s\") = %d, want %d",
                  r->in ? r->in : "(null)", nd_is_ip(r->in), r->want);
    check_consistent(r->in);
}
END_TEST

START_TEST(test_modern_isipv4)
{
    const struct ip_row *r = &modern_isipv4[_i];
    ck_assert_msg(nd_is_ipv4(r->in) == r->want, "isIPv4(\"%s\") = %d, want %d",
                  r->in ? r->in : "(null)", nd_is_ipv4(r->in), r->want);
    check_consistent(r->in);
}
END_TEST

START_TEST(test_modern_isipv6)
{
    const struct ip_row *r = &modern_isipv6[_i];
    ck_assert_msg(nd_is_ipv6(r->in) == r->want, "isIPv6(\"%s\") = %d, want %d",
                  r->in ? r->in : "(null)", nd_is_ipv6(r->in), r->want);
    check_consistent(r->in);
}
END_TEST

START_TEST(test_ipv4_true)
{
    const char *in = ipv4_true[_i];
    ck_assert_msg(nd_is_ipv4(in) == 1, "isIPv4(\"%s\") = %d, want 1", in, nd_is_ipv4(in));
    ck_assert_msg(nd_is_ip(in) == 4, "isIP(\"%s\") = %d, want 4", in, nd_is_ip(in));
    check_consistent(in);
}
END_TEST

START_TEST(test_ipv4_false)
{
    const char *in = ipv4_false[_i];
    ck_assert_msg(nd_is_ipv4(in) == 0, "isIPv4(\"%s\") = %d, want 0", in, nd_is_ipv4(in));
    check_consistent(in);
}
END_TEST

START_TEST(test_ipv6_true)
{
    const char *in = ipv6_true[_i];
    ck_assert_msg(nd_is_ipv6(in) == 1, "isIPv6(\"%s\") = %d, want 1", in, nd_is_ipv6(in));
    ck_assert_msg(nd_is_ip(in) == 6, "isIP(\"%s\") = %d, want 6", in, nd_is_ip(in));
    check_consistent(in);
}
END_TEST

START_TEST(test_ipv6_false)
{
    const char *in = ipv6_false[_i];
    ck_assert_msg(nd_is_ipv6(in) == 0, "isIPv6(\"%s\") = %d, want 0", in, nd_is_ipv6(in));
    check_consistent(in);
}
END_TEST

START_TEST(test_extra)
{
    const struct ip_row *r = &extra_isip[_i];
    ck_assert_msg(nd_is_ip(r->in) == r->want, "isIP(\"%s\") = %d, want %d", r->in, nd_is_ip(r->in),
                  r->want);
    check_consistent(r->in);
}
END_TEST

/* A long run of digits or groups must be rejected without overflowing anything. */
START_TEST(test_long_inputs)
{
    enum { N = 100000 };
    char *s = malloc(N + 1);
    ck_assert_ptr_nonnull(s);
    memset(s, '9', N);
    s[N] = '\0';
    ck_assert_int_eq(nd_is_ip(s), 0);
    for (int i = 0; i < N; i++)
        s[i] = (i % 5 == 4) ? ':' : 'f';
    ck_assert_int_eq(nd_is_ip(s), 0);
    memset(s, ':', N);
    ck_assert_int_eq(nd_is_ip(s), 0);
    free(s);
}
END_TEST

START_TEST(test_family_name)
{
    ck_assert_str_eq(nd_family_name(4), "IPv4");
    ck_assert_str_eq(nd_family_name(6), "IPv6");
    ck_assert_ptr_null(nd_family_name(0));
    ck_assert_ptr_null(nd_family_name(5));
    ck_assert_ptr_null(nd_family_name(-4));
}
END_TEST

static void add_rows(Suite *s, const char *name, const TTest *t, int n)
{
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, 10);
    tcase_add_loop_test(tc, t, 0, n);
    suite_add_tcase(s, tc);
}

static Suite *isip_suite(void)
{
    Suite *s = suite_create("isip");
    add_rows(s, "v010_isIP", test_v010_isip, N_ELEMS(v010_isip));
    add_rows(s, "v010_isIPv4", test_v010_isipv4, N_ELEMS(v010_isipv4));
    add_rows(s, "v010_isIPv6", test_v010_isipv6, N_ELEMS(v010_isipv6));
    add_rows(s, "modern_isIP", test_modern_isip, N_ELEMS(modern_isip));
    add_rows(s, "modern_isIPv4", test_modern_isipv4, N_ELEMS(modern_isipv4));
    add_rows(s, "modern_isIPv6", test_modern_isipv6, N_ELEMS(modern_isipv6));
    add_rows(s, "isIPv4_true", test_ipv4_true, N_ELEMS(ipv4_true));
    add_rows(s, "isIPv4_false", test_ipv4_false, N_ELEMS(ipv4_false));
    add_rows(s, "isIPv6_true", test_ipv6_true, N_ELEMS(ipv6_true));
    add_rows(s, "isIPv6_false", test_ipv6_false, N_ELEMS(ipv6_false));
    add_rows(s, "extra", test_extra, N_ELEMS(extra_isip));

    TCase *tc = tcase_create("misc");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, test_long_inputs);
    tcase_add_test(tc, test_family_name);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(isip_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}

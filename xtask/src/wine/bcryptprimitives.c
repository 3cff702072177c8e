/* A stand-in for Windows 10's bcryptprimitives.dll (ProcessPrng), which Rust's std imports and
 * Wine 8 lacks: `cargo xtask cross` builds it with MinGW into its Wine prefix. */
#include <windows.h>
#define SystemFunction036 NTAPI SystemFunction036
#include <ntsecapi.h>
#undef SystemFunction036
BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG n = len > 0x7fffffff ? 0x7fffffff : (ULONG)len;
        if (!RtlGenRandom(data, n)) return FALSE;
        data += n; len -= n;
    }
    return TRUE;
}

"""Size limits shared by the core and the command line (standard library only, so the CLI can
check its flags before it imports numpy)."""

#: Token counts and totals are int64 inside; every grid point, floor, cap and total stays
#: below this, so sums over heads cannot overflow.
MAX_TOKENS = 2**62
#: How messages write :data:`MAX_TOKENS`.
MAX_TOKENS_TEXT = "2**62"

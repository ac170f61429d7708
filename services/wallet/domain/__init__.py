"""The wallet's domain: balances, holds, journal entries and the commands on them."""

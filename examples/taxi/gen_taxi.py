"""Write deterministic fake NYC yellow-taxi trip CSVs in the 2009 layout.

    python3 gen_taxi.py OUTDIR [--rows N] [--files N] [--seed N]

One file per month, `yellow_tripdata_2009-MM.csv`, each with the 2009 header
line first. The same arguments always give byte-identical files.

Speed comes from building rows out of small pools of pre-formatted pieces:
a per-month pool of "vendor,pickup,dropoff," prefixes and one pool of
",distance,...,total" suffixes, joined around a passenger count drawn per row.
`random.choices` picks from the pools in C, so a few million rows take seconds.
Stdlib only.
"""
import argparse
import calendar
import os
import random

HEADER = ("vendor_name,Trip_Pickup_DateTime,Trip_Dropoff_DateTime,Passenger_Count,"
          "Trip_Distance,Start_Lon,Start_Lat,Rate_Code,store_and_forward,End_Lon,End_Lat,"
          "Payment_Type,Fare_Amt,surcharge,mta_tax,Tip_Amt,Tolls_Amt,Total_Amt\n")
YEAR = 2009
VENDORS = ["VTS", "CMT", "DDS"]
VENDOR_WEIGHTS = [45, 45, 10]
# Shaped like the real 2009-2020 totals, with 7+ made less rare so they show up.
PASSENGERS = ["0", "1", "2", "3", "4", "5", "6", "7", "8"]
PASSENGER_WEIGHTS = [400, 70000, 14000, 4200, 2000, 6000, 2300, 2, 1]
PAYMENTS = ["CASH", "Credit", "CREDIT", "Cash", "No Charge", "Dispute"]
PAYMENT_WEIGHTS = [40, 20, 10, 25, 3, 2]
POOL_SIZE = 4096
CHUNK_ROWS = 100_000


def _time(month: int, seconds: int) -> str:
    day, rest = divmod(seconds, 86400)
    hour, rest = divmod(rest, 3600)
    minute, second = divmod(rest, 60)
    return f"{YEAR}-{month:02d}-{day + 1:02d} {hour:02d}:{minute:02d}:{second:02d}"


def _prefixes(rng: random.Random, month: int) -> list[str]:
    """'vendor,pickup,dropoff,' strings whose pickups fall inside `month`."""
    month_seconds = calendar.monthrange(YEAR, month)[1] * 86400
    out = []
    for _ in range(POOL_SIZE):
        vendor = rng.choices(VENDORS, VENDOR_WEIGHTS)[0]
        pickup = rng.randrange(month_seconds - 7200)
        dropoff = pickup + rng.randrange(60, 3600)
        out.append(f"{vendor},{_time(month, pickup)},{_time(month, dropoff)},")
    return out


def _suffixes(rng: random.Random) -> list[str]:
    """',distance,...,total' strings: the trip's geometry and money."""
    out = []
    for _ in range(POOL_SIZE):
        distance = round(rng.expovariate(1 / 2.5), 2)
        start_lon, start_lat = -74.0 + rng.gauss(0, 0.03), 40.75 + rng.gauss(0, 0.03)
        end_lon, end_lat = start_lon + rng.gauss(0, 0.02), start_lat + rng.gauss(0, 0.02)
        payment = rng.choices(PAYMENTS, PAYMENT_WEIGHTS)[0]
        fare = round(2.5 + 2.0 * distance, 2)
        surcharge = rng.choice([0.0, 0.5, 1.0])
        tip = round(fare * rng.choice([0.0, 0.1, 0.15, 0.2]), 2) if payment.lower() == "credit" else 0.0
        tolls = rng.choice([0.0] * 19 + [4.15])
        total = round(fare + surcharge + tip + tolls, 2)
        out.append(f",{distance},{start_lon:.6f},{start_lat:.6f},,,{end_lon:.6f},{end_lat:.6f},"
                   f"{payment},{fare},{surcharge},,{tip},{tolls},{total}\n")
    return out


def write_month(path: str, month: int, rows: int, seed: int, suffixes: list[str]) -> None:
    rng = random.Random(seed * 100 + month)
    prefixes = _prefixes(rng, month)
    with open(path, "w") as f:
        f.write(HEADER)
        for start in range(0, rows, CHUNK_ROWS):
            n = min(CHUNK_ROWS, rows - start)
            f.write("".join([a + p + b for a, p, b in zip(rng.choices(prefixes, k=n),
                                                          rng.choices(PASSENGERS, PASSENGER_WEIGHTS, k=n),
                                                          rng.choices(suffixes, k=n))]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir")
    parser.add_argument("--rows", type=int, default=3_000_000, help="total rows over all files")
    parser.add_argument("--files", type=int, default=12, help="number of monthly files, 1-12")
    parser.add_argument("--seed", type=int, default=2009)
    args = parser.parse_args()
    if not 1 <= args.files <= 12 or args.rows < 0:
        parser.error("--files must be 1-12 and --rows >= 0")
    os.makedirs(args.outdir, exist_ok=True)
    suffixes = _suffixes(random.Random(args.seed))
    per_file, extra = divmod(args.rows, args.files)
    for month in range(1, args.files + 1):
        path = os.path.join(args.outdir, f"yellow_tripdata_{YEAR}-{month:02d}.csv")
        write_month(path, month, per_file + (month <= extra), args.seed, suffixes)


if __name__ == "__main__":
    main()

"""10,000 mixed collectives on 4 local Gloo ranks; prints resident memory per rank as it goes.

    python benchmarks/soak.py [--ranks 4] [--ops 10000]
"""

from distcomm.testing.soak import main

if __name__ == "__main__":
    main()

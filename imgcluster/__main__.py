from imgcluster.cli import main

main()

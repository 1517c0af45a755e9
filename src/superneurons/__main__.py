from superneurons.cli import main

main()

namespace AutoPrune.AspNetCore.Tests; public class Placeholder { }

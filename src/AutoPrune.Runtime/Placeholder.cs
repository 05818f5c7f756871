namespace AutoPrune; internal static class Placeholder {}
